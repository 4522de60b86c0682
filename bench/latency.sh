#!/usr/bin/env bash
# Tail latency at a fixed rate (issue 23, item 4): the `latency` scenario (10 publishers to 10
# subscribers, 10,000 msg/s in total, QoS 1, 64 B) against `starling-bench forwarder` (the
# generator's parse-and-forward floor: exact topics, no sessions or queues), Starling, mosquitto
# and rumqttd, interleaved: every round runs each once, in an order that rotates between
# rounds, a fresh server each time, pinned to core 0 with the generator on core 1, both at
# SCHED_RR priority 1 when allowed; the configs of bench/compare.sh (bench/peers.sh). Prints
# the median of each percentile over the rounds with its spread (lowest-highest) and writes
# one JSON line per run to FILE (default a temporary file). Traffic goes to 127.0.0.1 only.
#
#   bench/latency.sh [--rounds N] [--duration S] [--servers forwarder,starling,...]
#                    [--before DIR] (a release build's `starling`: server starling-before)
#                    [--out FILE]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=5
MEASURE=10
WARMUP=3
SERVERS=forwarder,starling,mosquitto,rumqttd
BEFORE=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) MEASURE="$2"; shift ;;
        --servers) SERVERS="$2"; shift ;;
        --before) BEFORE="$2"; SERVERS="$SERVERS,starling-before"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
RUMQTTD_VERSION=0.20.0
TOOLS="$ROOT/bench/.tools"
RUMQTTD="$TOOLS/bin/rumqttd"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
. bench/peers.sh
install_peers "$SERVERS" "$TOOLS" "$RUMQTTD_VERSION"
cargo build --release -q -p starling -p starling-bench
BIN=${CARGO_TARGET_DIR:-target}/release

WORK=$(mktemp -d /tmp/starling-latency.XXXXXX)
trap 'pkill -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
[ -n "$OUT" ] || OUT=$(mktemp /tmp/starling-latency-XXXXXX.jsonl)
: > "$OUT"
PRIO=(chrt -r 1)
"${PRIO[@]}" true 2>/dev/null || PRIO=()

starling_toml > "$WORK/starling.toml"

PORT=25000
run() { # server round
    local server=$1 round=$2 dir pid
    PORT=$((PORT + 1))
    dir="$WORK/$server-$PORT"
    mkdir -p "$dir/data"
    case "$server" in
        forwarder)
            taskset -c 0 "${PRIO[@]}" "$BIN/starling-bench" forwarder --port "$PORT" \
                >"$dir/log" 2>&1 & ;;
        starling|starling-before)
            local exe="$BIN/starling"
            [ "$server" = starling-before ] && exe="$BEFORE/starling"
            taskset -c 0 "${PRIO[@]}" "$exe" serve --config "$WORK/starling.toml" \
                --bind "127.0.0.1:$PORT" --data-dir "$dir/data" >"$dir/log" 2>&1 & ;;
        mosquitto)
            mosquitto_conf "$PORT" > "$dir/m.conf"
            taskset -c 0 "${PRIO[@]}" "$MOSQUITTO" -c "$dir/m.conf" >"$dir/log" 2>&1 & ;;
        rumqttd)
            rumqttd_toml "$PORT" 100000 1000 > "$dir/r.toml"
            taskset -c 0 "${PRIO[@]}" "$RUMQTTD" -q -c "$dir/r.toml" >"$dir/log" 2>&1 & ;;
        *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.5
    taskset -c 1 "${PRIO[@]}" "$BIN/starling-bench" --port "$PORT" --scenario latency \
        --broker-pid "$pid" --label "$server" --round "$round" --warmup "$WARMUP" \
        --duration "$MEASURE" >> "$OUT" || log "$server: generator failed (round $round)"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

IFS=, read -r -a LIST <<< "$SERVERS"
n=${#LIST[@]}
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for i in $(seq 0 $((n - 1))); do
        run "${LIST[$(((i + round - 1) % n))]}" "$round"
    done
done
python3 bench/latency-report.py "$OUT"
log "raw lines: $OUT"
