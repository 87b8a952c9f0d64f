#!/usr/bin/env bash
# Regenerates libs/proto from proto/: TypeScript types and gRPC stubs (ts-proto)
# and the binary descriptor set that gRPC reflection serves. Output is not
# committed; `npm run codegen` (and so `npm run build`) recreates it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
buf="$root/node_modules/.bin/buf"
out="$root/libs/proto/src/gen"
rm -rf "$out" && mkdir -p "$out"
cd "$root/proto"
"$buf" lint
"$buf" generate --path aspen --path grpc
"$buf" build -o "$root/libs/proto/descriptor-set.binpb" --as-file-descriptor-set
