#!/usr/bin/env bash
# The whole test suite: formatting, lints, the deploy/ manifests (rendered, validated, scanned),
# and every test -- unit, end-to-end (each spawns its own nats-server), RBAC against the rendered
# manifests, the container image and docker-compose.yml. Installs and starts what it needs
# (nats-server, kubectl and validators, Docker) and stops the Docker engine if it started it.
# This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

FLUXGATE_NATS_SERVER="$(scripts/nats-server.sh)"
FLUXGATE_KUBECTL="$(scripts/tools.sh)/kubectl"
export FLUXGATE_NATS_SERVER FLUXGATE_KUBECTL
echo "using $FLUXGATE_NATS_SERVER ($("$FLUXGATE_NATS_SERVER" --version)), $FLUXGATE_KUBECTL"

cargo fmt --all -- --check
# --all-features: also lints ingest's `fuzzing` build, which the fuzz target uses.
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
scripts/manifests.sh

# The end-to-end tests run the real binaries of other packages, which test builds skip; the
# container tests run them in the image assembled from those same binaries.
cargo build --workspace --bins --locked
trap 'scripts/docker.sh stop' EXIT
scripts/docker.sh start
scripts/images.sh target/debug

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
