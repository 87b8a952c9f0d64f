#!/usr/bin/env bash
# One command, a working local Aspen: nats-server with JetStream, the
# scheduler, job-manager and coordinator, and one agent, each a process on
# loopback, data and logs under .aspen/. Ctrl-C (or SIGTERM) stops them all.
#
# Environment: ASPEN_DEV_DIR (default ./.aspen), ASPEN_NATS_PORT (4222),
# ASPEN_AGENT_SLOTS (4), ASPEN_AGENT_LABELS ("env=dev"), ASPEN_AGENT_CAPABILITIES
# ("shell"). Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (e.g.
# http://127.0.0.1:4318 for a local Jaeger).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

dir=${ASPEN_DEV_DIR:-$root/.aspen}
nats_port=${ASPEN_NATS_PORT:-4222}

if ! command -v nats-server >/dev/null 2>&1; then
  echo "nats-server is not installed; installing Debian's package (apt-get install -y nats-server)..."
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y nats-server || { apt-get update && apt-get install -y nats-server; }
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get install -y nats-server || { sudo apt-get update && sudo apt-get install -y nats-server; }
  else
    echo "Please install nats-server (Debian/Ubuntu: apt-get install nats-server) and run this again." >&2
    exit 1
  fi
fi
[ -d node_modules ] || npm ci
npm run build --silent

mkdir -p "$dir/nats" "$dir/logs" "$dir/work"
pids=()
stopping=0
stop() {
  trap - INT TERM EXIT
  stopping=1
  echo "stopping..."
  # Agent first (it drains), then the control plane, then NATS.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; wait "${pids[$i]}" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

nats-server -js -sd "$dir/nats" -a 127.0.0.1 -p "$nats_port" >"$dir/logs/nats.log" 2>&1 &
pids+=($!)

# Every RPC needs a token: made once, kept in $dir/tokens (see README). Plaintext on loopback.
agent_id=${ASPEN_WORKER_ID:-local-agent}
node scripts/make-tokens.mjs "$dir/tokens" "$agent_id"
export ASPEN_AUTH_TOKENS_FILE="$dir/tokens/tokens.json"
# Secret job variables (docs/security.md, Secrets): the control plane gets only the
# public key, the agent the private key and a secrets directory (one file per agent_ref).
node scripts/secrets-keys.mjs "$dir/secrets"
mkdir -p "$dir/agent-secrets"
[ -e "$dir/agent-secrets/db-password" ] || (umask 077 && echo "dev-db-password" >"$dir/agent-secrets/db-password")
export ASPEN_TLS=off
export ASPEN_NATS_SERVERS="nats://127.0.0.1:$nats_port"
export ASPEN_GRPC_HOST=127.0.0.1
[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ] || export OTEL_SDK_DISABLED=true
for svc in job-manager coordinator scheduler; do
  ASPEN_TOKEN=$(cat "$dir/tokens/service.token") ASPEN_SECRETS_PUBLIC_KEY_FILE="$dir/secrets/secrets.pub" \
    node "services/$svc/dist/main.js" >"$dir/logs/$svc.log" 2>&1 &
  pids+=($!)
done
node scripts/wait-healthy.mjs 127.0.0.1:50052 127.0.0.1:50053 127.0.0.1:50051

ASPEN_TOKEN=$(cat "$dir/tokens/agent-$agent_id.token") ASPEN_WORKER_ID=$agent_id ASPEN_SLOTS=${ASPEN_AGENT_SLOTS:-4} \
  ASPEN_LABELS=${ASPEN_AGENT_LABELS:-env=dev} ASPEN_CAPABILITIES=${ASPEN_AGENT_CAPABILITIES:-shell} \
  ASPEN_WORK_DIR="$dir/work" ASPEN_HEALTH_HOST=127.0.0.1 \
  ASPEN_SECRETS_PRIVATE_KEY_FILE="$dir/secrets/secrets.key" ASPEN_AGENT_SECRETS_DIR="$dir/agent-secrets" \
  node services/agent/dist/main.js >"$dir/logs/agent.log" 2>&1 &
pids+=($!)
node scripts/wait-healthy.mjs 127.0.0.1:50054

cat <<TXT

Aspen is running (data in $dir, logs in $dir/logs):
  scheduler    127.0.0.1:50051
  job-manager  127.0.0.1:50052
  coordinator  127.0.0.1:50053
  agent        ${ASPEN_WORKER_ID:-local-agent} (health on 127.0.0.1:50054)
  nats         127.0.0.1:$nats_port

Every RPC needs a token. In another terminal:
      export ASPEN_TOKEN=\$(cat $dir/tokens/admin.token)
      npx aspen schedule add --id hello --cron '*/2 * * * * *' -- echo hello
      npx aspen job list
Press Ctrl-C to stop.
TXT
wait -n "${pids[@]}" || true
[ "$stopping" = 1 ] || echo "a process exited unexpectedly; see $dir/logs" >&2
