#!/usr/bin/env bash
# Quick start: runs a private nats-server and fluxgate-ingest with deploy/examples/receivers.yaml,
# sends a signed sample GitHub push, and shows the delivery JetStream stored. Ingest then keeps
# serving on http://127.0.0.1:9292 until Ctrl-C (or exits at once with --once).
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER="$(scripts/nats-server.sh)"
cargo build --quiet -p fluxgate-ingest -p fluxgate-tests --bins
bin=target/debug

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

nats_port="${FLUXGATE_NATS_PORT:-14222}"
export NATS_URL="nats://127.0.0.1:${nats_port}"
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
pids+=($!)

receivers=deploy/examples/receivers.yaml
"$bin/fluxgate-ingest" --receivers-file "$receivers" \
  --listen 127.0.0.1:9292 --admin-listen 127.0.0.1:9293 --log-format text &
pids+=($!)
"$bin/fluxgate-sample" wait --url http://127.0.0.1:9293/readyz

token=quickstart-secret-change-me
digest="$(printf %s "${token}github-receiver" "flux-system" | sha256sum | cut -d' ' -f1)"
url="http://127.0.0.1:9292/hook/${digest}"

echo
echo "== POST a signed GitHub push to ${url}"
"$bin/fluxgate-sample" send --url "$url" --secret "$token" --delivery quickstart-1
echo
echo "== The delivery as stored in JetStream (${NATS_URL})"
"$bin/fluxgate-sample" show
echo

if [ "${1:-}" = "--once" ]; then
  exit 0
fi
echo "fluxgate-ingest serves ${url} (metrics: http://127.0.0.1:9293/metrics). Ctrl-C stops it."
wait "${pids[1]}"
