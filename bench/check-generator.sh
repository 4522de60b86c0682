#!/usr/bin/env bash
# Shows the load generator is not the bottleneck: runs the throughput scenarios against
# `starling-bench forwarder` (a trivial exact-topic forwarding server, no broker logic) with the
# same pinning, priority and durations as bench/compare.sh, and writes the JSON lines to
# bench/generator-check.jsonl (or --out FILE), which bench/report.py puts in RESULTS.md.
#
#   bench/check-generator.sh [--quick] [--priority rt|nice|none] [--out FILE]
#
# Expects the release binaries built (bench/compare.sh builds them and calls this script).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WARMUP=3
MEASURE=10
PRIORITY=rt
OUT="$ROOT/bench/generator-check.jsonl"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) WARMUP=1; MEASURE=3 ;;
        --priority) PRIORITY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
case "$PRIORITY" in
    rt) PRIO=(chrt -r 1); MIN_UTIL=0.90 ;;
    nice) PRIO=(nice -n -10); MIN_UTIL=0.95 ;;
    none) PRIO=(); MIN_UTIL=0.95 ;;
    *) echo "--priority rt|nice|none" >&2; exit 2 ;;
esac
BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/starling-bench"
: > "$OUT"
PORT=23000
for scenario in p2p-qos0 p2p-qos1 fan-out-qos0 fan-out-qos1 large; do
    PORT=$((PORT + 1))
    taskset -c 0 "${PRIO[@]}" "$BENCH" forwarder --port "$PORT" &
    FWD=$!
    sleep 0.5
    echo "[$(date +%H:%M:%S)] $scenario on the forwarder" >&2
    taskset -c 1 "${PRIO[@]}" "$BENCH" --port "$PORT" --scenario "$scenario" \
        --label forwarder --broker-pid "$FWD" --warmup "$WARMUP" --duration "$MEASURE" \
        --min-broker-util "$MIN_UTIL" >> "$OUT" || echo "  failed" >&2
    kill "$FWD"
    wait "$FWD" 2>/dev/null || true
done
