#!/usr/bin/env bash
# Makes a development CA and certificates for Aspen's gRPC listeners:
#   scripts/dev-certs.sh DIR [EXTRA_DNS_NAME...]
# writes DIR/ca.pem, DIR/server.pem + server-key.pem (SANs: localhost,
# 127.0.0.1 and the extra names, e.g. compose service names) and
# DIR/client.pem + client-key.pem (for mTLS). For development only:
# production certificates come from your own CA.
set -euo pipefail
dir=${1:?usage: dev-certs.sh DIR [EXTRA_DNS_NAME...]}
shift
mkdir -p "$dir"
cd "$dir"
san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do san="$san,DNS:$name"; done
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=aspen-dev-ca" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=aspen-server" -keyout server-key.pem -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 \
  -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=serverAuth" "$san") -out server.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=aspen-client" -keyout client-key.pem -out client.csr 2>/dev/null
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 \
  -extfile <(printf "extendedKeyUsage=clientAuth") -out client.pem 2>/dev/null
rm -f server.csr client.csr ca.srl
chmod 600 ./*-key.pem
echo "certificates in $dir: ca.pem, server.pem/server-key.pem, client.pem/client-key.pem"
