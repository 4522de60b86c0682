#!/usr/bin/env bash
# What a gRPC plugin on every message costs: Starling without a plugin, with a `grpc` plugin
# asked about every PUBLISH (`message.publish` only, on_failure allow) whose peer is the
# minimal Rust plugin `starling-bench grpc-plugin` (passes everything at once:
# `starling-grpc`), and the same with the Python test plugin tests/interop/grpc_plugin.py
# (`starling-grpc-py`), in p2p QoS 0 and QoS 1. Broker on core 0, generator on core 1 (as
# bench/compare.sh), the plugin process unpinned; memory durability. Prints one JSON line
# per run, and one with the plugin's counters from /metrics (calls, failures, timeouts)
# after each run with a plugin; bench/RESULTS.md quotes them.
#
#   bench/grpc.sh [--rounds N]        (PYTHON: a python with grpcio and grpcio-tools,
#                                      default .venv/bin/python)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh grpc "$@"
BIN="${CARGO_TARGET_DIR:-target}/release"
PYTHON="${PYTHON:-.venv/bin/python}"
RUST_PEER=24001
PY_PEER=24002
"$BIN/starling-bench" grpc-plugin --port $RUST_PEER 2>"$WORK/rust-peer.log" &
rust_peer=$!
"$PYTHON" tests/interop/grpc_plugin.py --port $PY_PEER --stubs "$WORK/stubs" \
    --events EVENT_PUBLISH >"$WORK/py-peer.log" 2>&1 &
py_peer=$!
wait_port $RUST_PEER
wait_port $PY_PEER
port=24100
run() { # label scenario
    local label=$1 scenario=$2 dir pid plugin="" http
    port=$((port + 2)); http=$((port + 1)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    case "$label" in
        starling-grpc) plugin="[[plugin]]\nkind = \"grpc\"\nendpoint = \"http://127.0.0.1:$RUST_PEER\"\nevents = [\"message.publish\"]\n" ;;
        starling-grpc-py) plugin="[[plugin]]\nkind = \"grpc\"\nendpoint = \"http://127.0.0.1:$PY_PEER\"\nevents = [\"message.publish\"]\n" ;;
    esac
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "memory"\n%b' \
        "$port" "$plugin" > "$dir/s.toml"
    RUST_LOG=warn taskset -c 0 $RT "$BIN/starling" serve --config "$dir/s.toml" \
        --data-dir "$dir/data" --http-bind "127.0.0.1:$http" 2>"$dir/log" &
    pid=$!
    wait_port $port
    # The plugin connection is made in the background: give it a moment.
    [ -z "$plugin" ] || sleep 1
    taskset -c 1 $RT "$BIN/starling-bench" --port $port --scenario "$scenario" \
        --broker-pid $pid --label "$label" --round "$round" --warmup 3 --duration 10 || true
    if [ -n "$plugin" ]; then
        curl -s "http://127.0.0.1:$http/metrics" | awk -v l="$label" -v s="$scenario" '
            /^starling_plugin_calls_total/ { c = $NF }
            /^starling_plugin_failures_total/ { f = $NF }
            /^starling_plugin_timeouts_total/ { t = $NF }
            END { printf "{\"label\": \"%s\", \"scenario\": \"%s\", \"plugin_calls\": %d, \"plugin_failures\": %d, \"plugin_timeouts\": %d}\n", l, s, c, f, t }'
    fi
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
}
for round in $(seq "$ROUNDS"); do
    for scenario in p2p-qos0 p2p-qos1; do
        for label in starling starling-grpc starling-grpc-py; do
            run "$label" "$scenario"
        done
    done
done
kill $rust_peer $py_peer 2>/dev/null || true
wait $rust_peer $py_peer 2>/dev/null || true
