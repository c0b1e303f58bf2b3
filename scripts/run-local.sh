#!/usr/bin/env bash
# Quick start: the whole pipeline on this machine. A private nats-server, fluxgate-ingest with
# deploy/examples/receivers.yaml, and fluxgate-dispatcher in --dry-run against a local
# Kubernetes API stand-in serving deploy/examples/cluster.yaml -- or, only when asked with
# --cluster, against the cluster of the current kubeconfig. Sends a signed sample GitHub push,
# shows the stored delivery and the dispatcher's outcome events, prints commands to try next,
# and keeps serving until Ctrl-C or until any of its processes dies (--once: exit at once).
#
#   scripts/run-local.sh [--once] [--cluster]
set -euo pipefail
cd "$(dirname "$0")/.."

once=false use_cluster=false
for arg in "$@"; do
  case "$arg" in
    --once) once=true ;;
    --cluster) use_cluster=true ;;
    *) echo "usage: $0 [--once] [--cluster]" >&2; exit 2 ;;
  esac
done

NATS_SERVER="$(scripts/nats-server.sh)"
echo "== building (the first build takes a few minutes)"
cargo build --quiet -p fluxgate-ingest -p fluxgate-dispatcher -p fluxgate-cli -p fluxgate-tests --bins
bin="$PWD/target/debug"

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

nats_port="${FLUXGATE_NATS_PORT:-14222}"
export NATS_URL="nats://127.0.0.1:${nats_port}"
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
pids+=($!)

receivers="$PWD/deploy/examples/receivers.yaml"
export FLUXGATE_RECEIVERS_FILE="$receivers"
"$bin/fluxgate-ingest" --listen 127.0.0.1:9292 --admin-listen 127.0.0.1:9293 --log-format text &
pids+=($!)
"$bin/fluxgate-sample" wait --url http://127.0.0.1:9293/readyz --seconds 30

dispatcher_flags=(--admin-listen 127.0.0.1:9294 --log-format text --leader-election false
  --coalesce-window 200ms)
if $use_cluster; then
  "$bin/fluxgate-sample" cluster-reachable || { echo "--cluster: the current kubeconfig's cluster does not answer" >&2; exit 1; }
  echo "== dispatching to the cluster of the current kubeconfig (--cluster): its objects are annotated"
else
  echo "== --dry-run against a local Kubernetes API stand-in (scripts/run-local.sh --cluster uses your cluster)"
  "$bin/fluxgate-apiserver" --objects deploy/examples/cluster.yaml --kubeconfig "$work/kubeconfig" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/kubeconfig" ] && break; sleep 0.1; done
  [ -s "$work/kubeconfig" ] || { echo "the API stand-in did not start" >&2; exit 1; }
  export KUBECONFIG="$work/kubeconfig"
  dispatcher_flags+=(--dry-run)
fi
"$bin/fluxgate-dispatcher" "${dispatcher_flags[@]}" &
pids+=($!)
"$bin/fluxgate-sample" wait --url http://127.0.0.1:9294/readyz --seconds 30

# The webhook URL as fluxgate computes it, not recomputed here.
url="$("$bin/fluxgate" receivers list -o json |
  python3 -c 'import json, sys; print(next(r["url"] for r in json.load(sys.stdin) if r["receiver"] == "flux-system/github-receiver"))')"
token=quickstart-secret-change-me

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

if $once; then
  exit 0
fi
cat <<NEXT
Serving ${url} (metrics: :9293/metrics ingest, :9294/metrics dispatcher).
Try, in another terminal, while this runs:

  export NATS_URL=${NATS_URL} KUBECONFIG=${KUBECONFIG:-~/.kube/config} FLUXGATE_RECEIVERS_FILE=${receivers}
  ${bin}/fluxgate-sample send --url ${url} --secret ${token}
  ${bin}/fluxgate tail
  ${bin}/fluxgate deliveries show quickstart-1
  ${bin}/fluxgate replay --dry-run quickstart-1
  ${bin}/fluxgate receivers list

Ctrl-C stops everything.
NEXT
# Until Ctrl-C, or until any child dies: then the trap stops the others.
set +e
wait -n "${pids[@]}"
status=$?
echo "a fluxgate process exited (status ${status}); stopping the rest" >&2
exit "$status"
