#!/usr/bin/env bash
# Prints the size of an image (default fluxgate:dev) and its start-up time: from `docker run`
# of fluxgate-ingest (the example receivers file, NATS already running in a container on the
# same network) to its /readyz answering 200, over five runs. Needs Docker and the nats image
# docker-compose.yml names.
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-fluxgate:dev}"
nats_image="$(sed -n 's/^ *image: \(nats:.*\)$/\1/p' docker-compose.yml)"
net="fluxgate-bench-$$"

cleanup() {
  docker rm -f "$net-nats" "$net-ingest" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "$image: $(docker image inspect "$image" --format '{{.Size}}' | awk '{printf "%.1f MB", $1/1e6}')"
docker network create "$net" >/dev/null
docker run -d --name "$net-nats" --network "$net" --entrypoint nats-server "$nats_image" \
  --jetstream --store_dir /tmp/js >/dev/null
until docker logs "$net-nats" 2>&1 | grep -q "Server is ready"; do sleep 0.05; done

times=()
for _ in 1 2 3 4 5; do
  docker rm -f "$net-ingest" >/dev/null 2>&1 || true
  start=$(date +%s%N)
  docker run -d --name "$net-ingest" --network "$net" -p 127.0.0.1::9293 \
    -v "$PWD/deploy/examples/receivers.yaml:/receivers.yaml:ro" \
    -e NATS_URL="nats://$net-nats:4222" "$image" \
    fluxgate-ingest --receivers-file /receivers.yaml >/dev/null
  port="$(docker port "$net-ingest" 9293 | head -n1 | sed 's/.*://')"
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do sleep 0.01; done
  times+=($((($(date +%s%N) - start) / 1000000)))
done
sorted="$(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')"
echo "start-up (docker run to /readyz 200), ms over 5 runs: $sorted(median $(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p))"
