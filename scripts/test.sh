#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit and end-to-end, which spawn
# their own nats-server). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

FLUXGATE_NATS_SERVER="$(scripts/nats-server.sh)"
export FLUXGATE_NATS_SERVER
echo "using $FLUXGATE_NATS_SERVER ($("$FLUXGATE_NATS_SERVER" --version))"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real binaries of other packages, which test builds skip.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
