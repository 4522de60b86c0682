#!/usr/bin/env bash
# What plugins cost on the publish path: p2p QoS 0 and QoS 1 with Starling as it was before
# the hook seam (`starling-base`, a binary given by BASELINE), Starling with no plugin
# (`starling`), with a Rust plugin asked about every message (`starling-rust`: topic_rewrite
# with a publish rule that matches nothing, so the hook runs and passes every message), and
# with a webhook sent every message (`starling-webhook`: events = ["message.publish"] to a
# local sink, bench/webhook-sink.py, that answers 204 at once). Same pinning and priority
# as bench/compare.sh, memory durability. Labels alternate within each round. Prints one
# JSON line per run; bench/RESULTS.md quotes the medians.
#
#   BASELINE=/path/to/old/starling bench/plugins.sh [--rounds N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh plugins "$@"
SINK_PORT=24999
python3 bench/webhook-sink.py $SINK_PORT "$WORK/sink-events" &
SINK=$!
wait_port $SINK_PORT
labels="starling starling-rust starling-webhook"
[ -n "${BASELINE:-}" ] && labels="starling-base $labels"
port=25000
run() { # label scenario
    local label=$1 scenario=$2 dir pid plugin="" bin="$BIN/starling"
    port=$((port + 1)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    case "$label" in
        starling-base) bin="$BASELINE" ;;
        starling-rust)
            plugin='[[plugin]]\nkind = "topic_rewrite"\n[[plugin.rule]]\naction = "publish"\nsource = "elsewhere/+/x"\ndest = "other/$1"\n' ;;
        starling-webhook)
            plugin="[[plugin]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:$SINK_PORT/hook\"\nevents = [\"message.publish\"]\nbatch_size = 1000\nqueue_size = 100000\n" ;;
    esac
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "memory"\n%b' \
        "$port" "$plugin" > "$dir/s.toml"
    RUST_LOG=warn taskset -c 0 $RT "$bin" serve --config "$dir/s.toml" \
        --data-dir "$dir/data" --http-bind 127.0.0.1:0 2>"$dir/log" &
    pid=$!
    wait_port $port
    taskset -c 1 $RT "$BIN/starling-bench" --port $port --scenario "$scenario" \
        --broker-pid $pid --label "$label" --warmup 3 --duration 10 || true
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
}
for round in $(seq "$ROUNDS"); do
    for scenario in p2p-qos0 p2p-qos1; do
        for label in $labels; do
            run "$label" "$scenario"
        done
    done
done
kill $SINK; wait $SINK 2>/dev/null || true
# Events the sink received over all the `starling-webhook` runs (the rest were dropped at
# the broker's bounded queue, or still queued when a run ended).
echo "{\"webhook_events_received\": $(cat "$WORK/sink-events" 2>/dev/null || echo 0)}"
