#!/usr/bin/env bash
# Unpacks nats-server 2.10 from Debian 13's package into .aspen/nats-server-2.10/
# and prints the binary's path, for ASPEN_NATS_SERVER_BIN.
#
# Why: Debian 12 ships nats-server 2.9.10, which refuses `sync_interval` (fsync on
# every write), the durability setting deploy/ uses; this lets the benches measure
# its cost here. Only the binary is unpacked (no install, nothing outside the repo);
# it is a static Go program that needs glibc ≥ 2.34 (Debian 12 has 2.36).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.10.27-1+b2
SHA256=6d913ac987b78734c08537c2adeb1526cf735f216173a9170d94b185fcfe6f8a
URL="http://deb.debian.org/debian/pool/main/n/nats-server/nats-server_${VERSION}_amd64.deb"
DIR=.aspen/nats-server-2.10
BIN="$DIR/root/usr/sbin/nats-server"
if [ ! -x "$BIN" ]; then
  mkdir -p "$DIR"
  curl -fsSL -o "$DIR/nats-server.deb" "$URL"
  echo "$SHA256  $DIR/nats-server.deb" | sha256sum -c --quiet -
  dpkg-deb -x "$DIR/nats-server.deb" "$DIR/root"
fi
"$BIN" --version >&2
echo "$PWD/$BIN"
