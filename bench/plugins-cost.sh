#!/usr/bin/env bash
# What plugins cost per message, in instructions: the same brokers as bench/plugins.sh
# (BASELINE: Starling before the hook seam; no plugin; a Rust plugin asked about every
# message; a webhook sent every message), each run under callgrind while starling-bench
# sends p2p messages at a fixed rate, counters zeroed once the broker is up. Instruction
# counts do not depend on what else the machine is doing (unlike throughput on a shared
# 2-core machine), so small differences show. Prints one JSON line per run: instructions
# per message delivered.
#
#   BASELINE=/path/to/old/starling bench/plugins-cost.sh [--rounds N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh plugins-cost "$@"
SINK_PORT=26999
python3 bench/webhook-sink.py $SINK_PORT "$WORK/sink-events" &
SINK=$!
wait_port $SINK_PORT
labels="starling starling-rust starling-webhook"
[ -n "${BASELINE:-}" ] && labels="starling-base $labels"
port=27000
run() { # label scenario
    local label=$1 scenario=$2 dir pid plugin="" bin="$BIN/starling" out ir received
    port=$((port + 1)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    case "$label" in
        starling-base) bin="$BASELINE" ;;
        starling-rust)
            plugin='[[plugin]]\nkind = "topic_rewrite"\n[[plugin.rule]]\naction = "publish"\nsource = "elsewhere/+/x"\ndest = "other/$1"\n' ;;
        starling-webhook)
            plugin="[[plugin]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:$SINK_PORT/hook\"\nevents = [\"message.publish\"]\nbatch_size = 1000\nqueue_size = 100000\n" ;;
    esac
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n[limits]\nsys_interval_secs = 0\n[storage]\ndurability = "memory"\n%b' \
        "$port" "$plugin" > "$dir/s.toml"
    out="$dir/callgrind.out"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" serve --config "$dir/s.toml" --data-dir "$dir/data" \
        --http-bind 127.0.0.1:0 2>"$dir/log" &
    pid=$!
    for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    sleep 1
    callgrind_control -z $pid >/dev/null
    received=$("$BIN/starling-bench" --port $port --scenario "$scenario" --rate 2000 \
        --label "$label" --warmup 1 --duration 10 --min-broker-util 0 --max-gen-util 1 2>/dev/null \
        | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["received"])' || echo 0)
    kill -TERM $pid; wait $pid 2>/dev/null || true
    ir=$(grep -m1 '^summary:' "$out" | awk '{print $2}')
    python3 -c "import json; print(json.dumps({'label': '$label', 'scenario': '$scenario', 'instructions': $ir, 'received': $received, 'instructions_per_message': round($ir / max($received, 1))}))"
}
for round in $(seq "$ROUNDS"); do
    for scenario in p2p-qos0 p2p-qos1; do
        for label in $labels; do
            run "$label" "$scenario"
        done
    done
done
kill $SINK; wait $SINK 2>/dev/null || true
