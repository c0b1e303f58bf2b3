#!/usr/bin/env bash
# Quick start: the whole pipeline on this machine. A private nats-server, fluxgate-ingest with
# deploy/examples/receivers.yaml, and fluxgate-dispatcher -- against the cluster of the current
# kubeconfig when one is reachable, else in --dry-run against a local Kubernetes API stand-in
# serving deploy/examples/cluster.yaml. Sends a signed sample GitHub push, then shows the stored
# delivery and the dispatcher's outcome events. Keeps serving until Ctrl-C (--once: exit).
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER="$(scripts/nats-server.sh)"
cargo build --quiet -p fluxgate-ingest -p fluxgate-dispatcher -p fluxgate-tests --bins
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

dispatcher_flags=(--receivers-file "$receivers" --admin-listen 127.0.0.1:9294 --log-format text
  --leader-election false --coalesce-window 200ms)
if "$bin/fluxgate-sample" cluster-reachable 2>/dev/null; then
  echo "== dispatching to the cluster of the current kubeconfig"
else
  echo "== no reachable cluster: --dry-run against a local Kubernetes API stand-in"
  "$bin/fluxgate-apiserver" --objects deploy/examples/cluster.yaml --kubeconfig "$work/kubeconfig" &
  pids+=($!)
  while [ ! -s "$work/kubeconfig" ]; do sleep 0.1; done
  export KUBECONFIG="$work/kubeconfig"
  dispatcher_flags+=(--dry-run)
fi
"$bin/fluxgate-dispatcher" "${dispatcher_flags[@]}" &
pids+=($!)
"$bin/fluxgate-sample" wait --url http://127.0.0.1:9294/readyz

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
echo "== What the dispatcher did (FLUXGATE_OUTCOMES)"
"$bin/fluxgate-sample" outcomes --at-least 2
echo
echo "== The history, as the fluxgate CLI shows it (fluxgate deliveries list)"
"$bin/fluxgate" deliveries list
echo

if [ "${1:-}" = "--once" ]; then
  exit 0
fi
echo "Serving ${url} (metrics: :9293/metrics ingest, :9294/metrics dispatcher). Ctrl-C stops."
echo "Follow it live with: NATS_URL=${NATS_URL} ${bin}/fluxgate tail"
wait "${pids[1]}"
