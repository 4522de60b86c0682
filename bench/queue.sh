#!/usr/bin/env bash
# What buffers per subscription cost: Starling of this commit with the default
# `queue_scope = "session"` against the broker before buffers per subscription existed
# (BASELINE, the same scope: today's queue), beside `queue_scope = "subscription"` and the same
# with one queue priority (a filter no message matches, so every message pays the priority
# match and the buffers without being reordered). Fan-in (10 publishers into one wildcard
# subscriber, QoS 0) and fan-out (1 publisher to 100 subscribers, QoS 0 and QoS 1), same
# pinning and priority as bench/compare.sh, memory durability as there, and queue bounds high
# enough that nothing is dropped. Prints one JSON line per run; bench/RESULTS.md quotes the
# medians (`python3 bench/queue-report.py bench/queue.jsonl`).
#
#   BASELINE=/path/to/older/starling bench/queue.sh [--rounds N]
#   SCENARIOS="fan-out-qos1" LABELS="baseline session" ...   # a subset
#
# Binaries come from ${CARGO_TARGET_DIR:-target}/release (built first). The order of the
# variants rotates each round so that drift on the machine does not favour one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${BASELINE:?set BASELINE to the starling binary to compare with}"
ROUNDS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cargo build --release -q -p starling -p starling-bench
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/starling-queue.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$WORK"' EXIT
RT="chrt -r 1"
$RT true 2>/dev/null || RT=""
wait_port() { # port: up to 5 s for it to accept a connection
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done
}
port=25000
run() { # label scenario
    local label=$1 scenario=$2 dir bin="$BIN/starling" limits
    port=$((port + 1)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    limits=$'max_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296'
    local per_sub=$'queue_scope = "subscription"\nmax_queued_messages_per_subscription = 1000000\nmax_queued_bytes_per_subscription = 4294967296'
    case "$label" in
        baseline) bin=$BASELINE ;;
        session) ;;
        subscription) limits+=$'\n'$per_sub ;;
        subscription-priority)
            limits+=$'\n'$per_sub$'\n[[limits.queue_priority]]\nfilter = "alarms/#"\npriority = 10' ;;
    esac
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n[http]\nenabled = false\n[storage]\ndurability = "memory"\n[limits]\n%s\n' \
        "$port" "$limits" > "$dir/s.toml"
    RUST_LOG=warn taskset -c 0 $RT "$bin" serve --config "$dir/s.toml" \
        --data-dir "$dir/data" 2>"$dir/log" &
    pid=$!
    wait_port $port
    taskset -c 1 $RT "$BIN/starling-bench" --port $port --scenario "$scenario" \
        --broker-pid $pid --label "$label" --warmup 3 --duration 10 || true
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
    pid=""
}
read -r -a labels <<< "${LABELS:-baseline session subscription subscription-priority}"
for round in $(seq "$ROUNDS"); do
    for scenario in ${SCENARIOS:-fan-in fan-out-qos0 fan-out-qos1}; do
        n=${#labels[@]}
        for i in $(seq 0 $((n - 1))); do
            run "${labels[$(( (i + round) % n ))]}" "$scenario"
        done
    done
done
