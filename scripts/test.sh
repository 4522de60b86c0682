#!/usr/bin/env bash
# Runs every test of the project:
#   1. installs the test dependencies (scripts/install-test-deps.sh),
#   2. builds the broker binary (debug),
#   3. cargo test --workspace (Rust unit and integration tests), and the cluster simulation
#      again with tokio's scheduler seeded (24 seeds, each replayable),
#   4. the black-box interoperability suite (tests/interop, pytest) against
#      the binary built in step 2.
# Exits non-zero if any step fails. Extra pytest options: PYTEST_ADDOPTS.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
STARLING_BIN="${STARLING_BIN:-$TARGET_DIR/debug/starling}"

step() { printf '\n==> %s\n' "$*"; }

failed=()

step "install test dependencies"
if ! scripts/install-test-deps.sh </dev/null; then
    echo "test.sh: installing the test dependencies failed" >&2
    exit 1
fi

step "cargo build -p starling --bins"
build_ok=1
if ! cargo build -p starling --bins; then
    build_ok=0
    failed+=("cargo build")
fi

step "cargo test --workspace"
if ! timeout --kill-after=30 1500 cargo test --workspace; then
    failed+=("cargo test")
fi

# The cluster simulation again, built so that turmoil seeds tokio's scheduler too: every seed
# then replays exactly, which a_seed_replays_the_same_history checks. Its own target
# directory, so the main build is not rebuilt with other flags.
step "cluster simulation, deterministic (--cfg tokio_unstable)"
if ! RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR="$TARGET_DIR/sim" CLUSTER_SIM_SEEDS=24 \
    timeout --kill-after=30 900 cargo test -p starling-cluster --test simulation -- --include-ignored; then
    failed+=("cluster simulation")
fi

step "interop suite (tests/interop) against $STARLING_BIN"
if [ "$build_ok" -eq 1 ]; then
    if ! env -u INTEROP_REFERENCE STARLING_BIN="$STARLING_BIN" timeout --kill-after=30 600 \
        .venv/bin/python -m pytest tests/interop -q </dev/null; then
        failed+=("interop tests")
    fi
else
    echo "skipped: the broker did not build"
    failed+=("interop tests (not run)")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    (IFS=','; echo "test.sh: FAILED: ${failed[*]}" >&2)
    exit 1
fi
