#!/usr/bin/env bash
# QoS 1 p2p throughput and latency with durable subscribers (clean session 0): Starling in each
# durability mode (sync, periodic, memory) beside mosquitto with autosave_on_changes (its only
# setting that loses nothing acknowledged across kill -9). Same pinning and priority as
# bench/compare.sh. Prints one JSON line per run; bench/RESULTS.md quotes the medians.
#
#   bench/durability.sh [--rounds N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh durability "$@"
command -v mosquitto >/dev/null || { apt-get update -q && apt-get install -y -q mosquitto; }
port=22000
run() { # label -> one JSON line (latency scenario and throughput scenario)
    local label=$1 scenario=$2 dir pid
    port=$((port + 1)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    case "$label" in
        starling-*)
            printf '[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "%s"\ncommit_interval_ms = 100\n' \
                "${label#starling-}" > "$dir/s.toml"
            RUST_LOG=warn taskset -c 0 $RT "$BIN/starling" serve --config "$dir/s.toml" \
                --bind 127.0.0.1:$port --data-dir "$dir/data" 2>"$dir/log" &
            pid=$! ;;
        mosquitto-autosave)
            printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nautosave_on_changes true\nautosave_interval 1\nmax_inflight_messages 1000\nmax_queued_messages 1000000\nlog_dest none\n' \
                "$port" "$dir/data" > "$dir/m.conf"
            taskset -c 0 $RT mosquitto -c "$dir/m.conf" 2>"$dir/log" &
            pid=$! ;;
    esac
    wait_port $port
    taskset -c 1 $RT "$BIN/starling-bench" --port $port --scenario "$scenario" --persistent \
        --broker-pid $pid --label "$label" --warmup 3 --duration 10 || true
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
}
for round in $(seq "$ROUNDS"); do
    for label in starling-sync starling-periodic starling-memory mosquitto-autosave; do
        run "$label" p2p-qos1
        run "$label" latency
    done
done
