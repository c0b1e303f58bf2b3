#!/usr/bin/env bash
# A Docker engine for the suite. `docker.sh start`: installs Debian's docker.io and
# docker-compose when absent and starts dockerd (vfs storage) when none answers, recording the
# daemon it started in target/dockerd.pid; `docker.sh stop` stops that daemon and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=target/dockerd.pid

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

case "${1:-start}" in
start)
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
    echo "installing Debian's docker.io and docker-compose" >&2
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker.io docker-compose >&2
  fi
  if docker info >/dev/null 2>&1; then exit 0; fi
  mkdir -p target
  echo "starting dockerd (log: target/dockerd.log)" >&2
  as_root sh -c 'dockerd --storage-driver=vfs >target/dockerd.log 2>&1 & echo $! >'"$pidfile"
  for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then exit 0; fi
    sleep 0.5
  done
  echo "dockerd did not answer within 60s; see target/dockerd.log" >&2
  exit 1
  ;;
stop)
  [ -f "$pidfile" ] || exit 0
  pid="$(cat "$pidfile")"
  rm -f "$pidfile"
  as_root kill "$pid" 2>/dev/null || exit 0
  # dockerd stops its containers first; give it the time it takes.
  for _ in $(seq 1 60); do
    as_root kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.5
  done
  as_root kill -9 "$pid" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
