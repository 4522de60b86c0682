#!/usr/bin/env bash
# Mixed load: a steady QoS 1 stream (10 publishers to 10 subscribers, 1,000 msg/s each, 64 B,
# clean sessions) while a seeded churn generator drives other clients around it (40 connection
# episodes a second from 400 client ids, 3.1.1 and 5.0, 40 % persistent sessions, wildcard and
# $SYS/# subscriptions, bursts of QoS 0/1/2 messages up to 2 KB, stalls, abrupt closes,
# garbage). Starling (durability sync and memory), mosquitto and rumqttd, each with its
# defaults, get the same traffic in the same run, interleaved over rounds.
#
#   bench/mixed.sh [--rounds N] [--duration S] [--warmup S] [--cooldown S]
#                  [--brokers starling-sync,starling-memory,mosquitto,rumqttd] [--out FILE]
#                  [--before PATH]   (another starling binary: brokers starling-sync-before and
#                                     starling-memory-before run it)
#                  [--v3-expiry S]   (Starling's `limits.v3_session_expiry_secs`, mosquitto's
#                                     `persistent_client_expiration`: 3.1.1 persistent sessions
#                                     expire too; by default they never do, as the spec has it)
#
# Each run: a fresh broker pinned to core 0 at normal priority; on core 1 the churn
# (`starling-bench --scenario churn`) at normal priority and the steady stream
# (`starling-bench --scenario mixed --episodes-per-s 0`, which measures) at SCHED_RR priority 1
# when allowed, so that its clients never wait behind the churn's. The broker is not given a
# real-time priority: under SCHED_RR a thread keeps the core for up to 100 ms before another of
# the same priority runs, which would make a broker with a committer thread wait behind it in
# a way no production scheduler does. One JSON line per run goes to --out (default: a
# temporary file, named at the end); bench/mixed-report.py turns the lines into the table of
# RESULTS.md.
#
# rumqttd: its MQTT 5 listener is separate and incomplete, and it has no $SYS, so its churn
# speaks 3.1.1 only and subscribes to the two churn filters (noted in the results).
# Traffic goes to 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=3
DURATION=60
WARMUP=5
COOLDOWN=0
BROKERS=starling-sync,starling-memory,mosquitto,rumqttd
OUT=
# A Starling binary to compare with (brokers starling-sync-before, starling-memory-before).
BEFORE=
# Expiry of 3.1.1 persistent sessions in seconds (empty: never, both brokers' default).
V3_EXPIRY=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --cooldown) COOLDOWN="$2"; shift ;;
        --brokers) BROKERS="$2"; shift ;;
        --before) BEFORE="$2"; shift ;;
        --v3-expiry) V3_EXPIRY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

RUMQTTD_VERSION=0.20.0
TOOLS="$ROOT/bench/.tools"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

. bench/peers.sh
install_peers "$BROKERS" "$TOOLS" "$RUMQTTD_VERSION"
# BENCH_BIN=DIR: binaries from DIR/release, not built (a long soak keeps running the
# binaries it started with while the tree is rebuilt).
if [ -n "${BENCH_BIN:-}" ]; then
    TARGET=$BENCH_BIN
else
    cargo build --release -q -p starling -p starling-bench
fi

WORK=$(mktemp -d /tmp/starling-mixed.XXXXXX)
[ -n "$OUT" ] || OUT="$WORK/mixed.jsonl"
BROKER_PID=
cleanup() {
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
}
trap cleanup EXIT
PRIO=(chrt -r 1)
"${PRIO[@]}" true 2>/dev/null || PRIO=()
ulimit -n "$(ulimit -Hn)"
PORT=23000

start_broker() { # name port dir
    local name=$1 port=$2 dir=$3
    mkdir -p "$dir"
    case "$name" in
        starling-sync*|starling-memory*)
            # Defaults, but for the durability mode and quieter logs.
            local mode=${name#starling-} bin="$TARGET/release/starling"
            [ "${name%-before}" != "$name" ] && bin=$BEFORE
            printf 'log_level = "warn"\n[storage]\ndurability = "%s"\n' "${mode%-before}" \
                > "$dir/starling.toml"
            [ -n "$V3_EXPIRY" ] &&
                printf '[limits]\nv3_session_expiry_secs = %s\n' "$V3_EXPIRY" >> "$dir/starling.toml"
            taskset -c 0 "$bin" serve \
                --config "$dir/starling.toml" --bind "127.0.0.1:$port" --data-dir "$dir/data" \
                > "$dir/broker.log" 2>&1 & ;;
        mosquitto)
            # Defaults (persistence off), anonymous clients on this port.
            printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest none\n' "$port" \
                > "$dir/mosquitto.conf"
            [ -n "$V3_EXPIRY" ] &&
                printf 'persistent_client_expiration %sm\n' "$(((V3_EXPIRY + 59) / 60))" >> "$dir/mosquitto.conf"
            taskset -c 0 "$MOSQUITTO" -c "$dir/mosquitto.conf" \
                > "$dir/broker.log" 2>&1 & ;;
        rumqttd)
            cat > "$dir/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF
            taskset -c 0 "$TOOLS/bin/rumqttd" -q -c "$dir/rumqttd.toml" \
                > "$dir/broker.log" 2>&1 & ;;
        *) echo "unknown broker $name" >&2; exit 2 ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "$name did not start:"; cat "$dir/broker.log" >&2
    return 1
}

IFS=, read -r -a LIST <<< "$BROKERS"
n=${#LIST[@]}
for round in $(seq "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        # Rotated by one each round, so no broker always runs first.
        name=${LIST[$(((k + round - 1) % n))]}
        PORT=$((PORT + 1))
        dir="$WORK/$name-$round"
        log "round $round: $name"
        start_broker "$name" "$PORT" "$dir" || continue
        extra=()
        [ "$name" = rumqttd ] && extra=(--v5-percent 0 --churn-filters 'churn/#,churn/+/x')
        common=(--port "$PORT" --warmup "$WARMUP" --duration "$DURATION" "${extra[@]}")
        RUST_BACKTRACE=0 taskset -c 1 "$TARGET/release/starling-bench" --scenario churn \
            "${common[@]}" > "$dir/churn.json" 2> "$dir/churn.log" &
        churn_pid=$!
        if line=$(RUST_BACKTRACE=0 taskset -c 1 "${PRIO[@]}" "$TARGET/release/starling-bench" \
            --scenario mixed --episodes-per-s 0 --label "$name" --round "$round" \
            --broker-pid "$BROKER_PID" --cooldown "$COOLDOWN" "${common[@]}" \
            2> "$dir/gen.log") && wait "$churn_pid"; then
            store=null
            [ -d "$dir/data" ] && store=$(du -sb "$dir/data" | cut -f1)
            line=$(python3 -c 'import json,sys
d=json.loads(sys.argv[1]); c=json.load(open(sys.argv[2]))["churn"]
c["episodes_per_s"]=round(c["episodes"]/float(sys.argv[4]),1)
d["churn"]=c; d["store_bytes_at_end"]=json.loads(sys.argv[3]); print(json.dumps(d))' \
                "$line" "$dir/churn.json" "$store" "$((WARMUP + DURATION))")
            echo "$line" >> "$OUT"
        else
            log "  failed: $(tail -c 300 "$dir/gen.log" "$dir/churn.log")"
        fi
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
        rm -rf "$dir/data"
    done
done
python3 bench/mixed-report.py "$OUT"
log "results: $OUT (command: bench/mixed.sh --rounds $ROUNDS --duration $DURATION --warmup $WARMUP --cooldown $COOLDOWN --brokers $BROKERS${BEFORE:+ --before $BEFORE}${V3_EXPIRY:+ --v3-expiry $V3_EXPIRY})"
