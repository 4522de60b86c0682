#!/usr/bin/env bash
# Compares Starling with mosquitto and rumqttd on this machine and writes bench/RESULTS.md.
#
#   bench/compare.sh [--quick] [--scenarios 1,2,...] [--rounds N] [--priority rt|nice|none]
#
# Installs what is missing (mosquitto from Debian, rumqttd with cargo into bench/.tools), builds
# Starling and the load generator in release, then for every round, every selected scenario and
# every broker (in an order rotated each round) starts a fresh broker pinned to core 0, runs the
# generator pinned to core 1, and appends its JSON line to results.jsonl. Scenario 1 also gets
# one unpinned run per broker. bench/report.py turns the lines into RESULTS.md. A full run
# (3 rounds, every scenario, not --quick) writes bench/RESULTS.md and bench/results.jsonl;
# any other run writes them to a temporary directory it names at the end.
#
#   --quick        1 round, 1 s warm-up, 3 s measured: a smoke run
#   --scenarios    which of 1-8 (default all); see RESULTS.md for what each is
#   --rounds N     rounds (default 3)
#   --priority     rt (default): broker and generator run SCHED_RR priority 1, so that other
#                  work on the machine does not decide the result; nice: nice -n -10; none
#   --no-check     skip bench/check-generator.sh (the generator against a trivial forwarder)
#
# Traffic goes to 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. bench/peers.sh

ROUNDS=3
WARMUP=3
MEASURE=10
SCENARIOS=1,2,3,4,5,6,7,8
PRIORITY=rt
QUICK=0
CHECK=1
COMMAND="bench/compare.sh $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; WARMUP=1; MEASURE=3 ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --priority) PRIORITY="$2"; shift ;;
        --no-check) CHECK=0 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

RUMQTTD_VERSION=0.20.0
TOOLS="$ROOT/bench/.tools"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
STARLING="$TARGET/release/starling"
BENCH="$TARGET/release/starling-bench"
RUMQTTD="$TOOLS/bin/rumqttd"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# --- Install and build -------------------------------------------------------------------------

# Not --locked: the lock file of rumqttd 0.20.0 pins metrics 0.22.1, which current rustc
# rejects (E0521). Without TLS and WebSocket: plain TCP only, like the other two here.
install_peers mosquitto,rumqttd "$TOOLS" "$RUMQTTD_VERSION"

log "building Starling and the load generator (release)"
cargo build --release -p starling -p starling-bench

# --- Environment -------------------------------------------------------------------------------

case "$PRIORITY" in
    rt) PRIO=(chrt -r 1); MIN_UTIL=0.90 ;;
    nice) PRIO=(nice -n -10); MIN_UTIL=0.95 ;;
    none) PRIO=(); MIN_UTIL=0.95 ;;
    *) echo "--priority rt|nice|none" >&2; exit 2 ;;
esac
if [ "$(nproc)" -lt 2 ]; then
    echo "needs at least 2 cores (broker on core 0, generator on core 1)" >&2
    exit 1
fi
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
# 50,000 idle connections need 50,000 descriptors in the broker and in the generator.
if (ulimit -n 60000) 2>/dev/null; then
    ulimit -n 60000
    NOFILE=60000
    BIG_CONNECTIONS=1
else
    BIG_CONNECTIONS=0
fi

WORK=$(mktemp -d /tmp/starling-compare.XXXXXX)
RAW="$WORK/results.jsonl"
OUTDIR="$ROOT/bench"
if [ "$QUICK" = 1 ] || [ "$SCENARIOS" != 1,2,3,4,5,6,7,8 ] || [ "$ROUNDS" != 3 ]; then
    OUTDIR="$WORK"
fi
: > "$RAW"
BROKER_PID=
cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
PORT=21000

# --- Brokers -------------------------------------------------------------------------------------
# Equivalent settings: 127.0.0.1, no persistence, anonymous, 1,000 outbound QoS 1 messages in
# flight per client, queues of 1,000,000 messages per client (nothing dropped at QoS 1), packets
# up to 4 MiB, 100,000 connections, logging off or at warnings.

write_config() { # broker port scenario -> path
    local broker=$1 port=$2 scenario=$3 dir="$WORK/run-$2"
    mkdir -p "$dir"
    case "$broker" in
        starling)
            starling_toml > "$dir/starling.toml"
            echo "$dir/starling.toml" ;;
        mosquitto)
            mosquitto_conf "$port" > "$dir/mosquitto.conf"
            echo "$dir/mosquitto.conf" ;;
        rumqttd)
            # rumqttd sends a QoS 0 subscriber at most max_outgoing_packet_count messages per
            # read of its log, and truncates the retained messages sent on SUBSCRIBE to that
            # count: the retained scenario needs it above 100,000.
            local outgoing=1000
            [ "$scenario" = retained ] && outgoing=200000
            rumqttd_toml "$port" 100000 "$outgoing" > "$dir/rumqttd.toml"
            echo "$dir/rumqttd.toml" ;;
    esac
}

start_broker() { # broker port scenario pin
    local broker=$1 port=$2 scenario=$3 pin=$4 conf
    conf=$(write_config "$broker" "$port" "$scenario")
    local pin_cmd=()
    [ "$pin" = 1 ] && pin_cmd=(taskset -c 0)
    case "$broker" in
        starling)
            "${pin_cmd[@]}" "${PRIO[@]}" "$STARLING" serve --config "$conf" \
                --bind "127.0.0.1:$port" --data-dir "$WORK/run-$port/data" \
                > "$WORK/run-$port/broker.log" 2>&1 & ;;
        mosquitto)
            "${pin_cmd[@]}" "${PRIO[@]}" "$MOSQUITTO" -c "$conf" \
                > "$WORK/run-$port/broker.log" 2>&1 & ;;
        rumqttd)
            "${pin_cmd[@]}" "${PRIO[@]}" "$RUMQTTD" -q -c "$conf" \
                > "$WORK/run-$port/broker.log" 2>&1 & ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.5
            return 0
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    log "$broker did not start on port $port:"
    cat "$WORK/run-$port/broker.log" >&2 || true
    return 1
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}

# One run: fresh broker, generator, JSON line (or an error line) appended to $RAW.
run_one() { # broker scenario round pin [generator args...]
    local broker=$1 scenario=$2 round=$3 pin=$4
    shift 4
    PORT=$((PORT + 1))
    local gen_pin=() tag=()
    [ "$pin" = 1 ] && gen_pin=(taskset -c 1)
    [ "$pin" = 1 ] || tag=(--tag unpinned)
    log "round $round: $scenario on $broker${tag[*]:+ (unpinned)}"
    if ! start_broker "$broker" "$PORT" "$scenario" "$pin"; then
        echo "{\"scenario\":\"$scenario\",\"broker\":\"$broker\",\"round\":$round,\"error\":\"broker did not start\"}" >> "$RAW"
        stop_broker
        return
    fi
    local line
    if line=$("${gen_pin[@]}" "${PRIO[@]}" "$BENCH" --port "$PORT" --scenario "$scenario" \
        --label "$broker" --round "$round" --broker-pid "$BROKER_PID" \
        --warmup "$WARMUP" --duration "$MEASURE" --min-broker-util "$MIN_UTIL" \
        "${tag[@]}" "$@" 2> "$WORK/run-$PORT/gen.log"); then
        echo "$line" >> "$RAW"
    else
        local err
        err=$(tail -c 300 "$WORK/run-$PORT/gen.log" | tr '\n"\\' '   ')
        log "  failed: $err"
        echo "{\"scenario\":\"$scenario\",\"broker\":\"$broker\",\"round\":$round,${tag[*]:+\"tag\":\"unpinned\",}\"error\":\"$err\"}" >> "$RAW"
    fi
    stop_broker
}

# --- Runs --------------------------------------------------------------------------------------

BROKERS=(starling mosquitto rumqttd)
selected() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
START=$(date +%s)

for round in $(seq "$ROUNDS"); do
    # Rotate the order each round: starling first, then second, then third.
    shift_by=$(( (round - 1) % 3 ))
    order=("${BROKERS[@]:$shift_by}" "${BROKERS[@]:0:$shift_by}")
    runs=()
    selected 1 && runs+=("p2p-qos0")
    selected 2 && runs+=("p2p-qos1")
    selected 3 && runs+=("fan-in")
    selected 4 && runs+=("fan-out-qos0" "fan-out-qos1")
    selected 5 && runs+=("latency")
    selected 6 && runs+=("connections")
    selected 7 && runs+=("retained")
    selected 8 && runs+=("large")
    for scenario in "${runs[@]}"; do
        for broker in "${order[@]}"; do
            case "$scenario" in
                connections)
                    run_one "$broker" connections "$round" 1 --connections 10000
                    run_one "$broker" connections "$round" 1 --connections 10000 \
                        --subscribe --tag subscribed
                    if [ "$BIG_CONNECTIONS" = 1 ]; then
                        run_one "$broker" connections "$round" 1 --connections 50000 --tag 50k
                    fi ;;
                *) run_one "$broker" "$scenario" "$round" 1 ;;
            esac
        done
    done
done
if selected 1; then
    for broker in "${BROKERS[@]}"; do
        run_one "$broker" p2p-qos0 1 0
    done
fi

if [ "$CHECK" = 1 ]; then
    quick=()
    [ "$QUICK" = 1 ] && quick=(--quick)
    "$ROOT/bench/check-generator.sh" "${quick[@]}" --priority "$PRIORITY" \
        --out "$OUTDIR/generator-check.jsonl"
fi

ELAPSED=$(( $(date +%s) - START ))
[ "$OUTDIR" = "$WORK" ] || cp "$RAW" "$OUTDIR/results.jsonl"
python3 "$ROOT/bench/report.py" "$OUTDIR/results.jsonl" "$OUTDIR/RESULTS.md" \
    --command "$COMMAND" --priority "$PRIORITY" --min-util "$MIN_UTIL" \
    --rounds "$ROUNDS" --warmup "$WARMUP" --measure "$MEASURE" --elapsed "$ELAPSED" \
    --nofile "$NOFILE" --big-connections "$BIG_CONNECTIONS" \
    --mosquitto "$("$MOSQUITTO" -h 2>&1 | head -1)" --rumqttd "rumqttd $RUMQTTD_VERSION" \
    --starling "$(git -C "$ROOT" rev-parse --short HEAD)"
log "done in ${ELAPSED}s: $OUTDIR/RESULTS.md, raw lines in $OUTDIR/results.jsonl"
