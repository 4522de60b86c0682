#!/usr/bin/env bash
# Scale curves (issue 23): how the broker's cost grows with the work. One fresh broker per
# point, pinned to core 0; the load generator (`starling-bench`) on core 1. The default run
# takes about 15 minutes on a 2-core machine, plus the build (855 s on 3 December 2026;
# bounded: every point has a time limit).
#
#   bench/scale.sh [--curves copy,subs,retained,startup,payload,fanout,clients]
#                  [--brokers starling,mosquitto,rumqttd]   (peers run payload, fanout, clients)
#                  [--clients 1000,2000,5000,10000,max]    (max: the most the open-file limit allows)
#                  [--subs 1000,10000,100000,1000000] [--kinds exact,wildcard]
#                  [--retained 1000,10000,100000,1000000]
#                  [--payloads 16,256,4096,65536,1048576] [--fanout 1,10,100,1000,10000]
#                  [--sessions 100000] [--queued 1000000] [--starts 3]
#                  [--duration S] [--priority rt|none] [--out FILE] [--quick]
#
# Curves (one JSON line per point to --out, default bench/scale.jsonl, which is replaced):
#   copy      the loopback copy limit: a plain TCP socket, writer on core 1, reader on core 0
#   payload   p2p QoS 0, 10 pairs, payload 16 B .. 1 MB: MB/s beside the copy limit
#   fanout    1 publisher to 1 .. 10,000 subscribers of one topic, QoS 0: deliveries/s
#   clients   N connected clients, N/2 publishing one message a second each to the other N/2
#             (p99 latency), then 10 saturating p2p pairs beside them (throughput); N up to
#             what the open-file limit allows (read from `ulimit -Hn`), 100,000 where it can
#   subs      1k .. 1M subscriptions (exact or wildcard filters, many distinct topics) over 8
#             connections: publish cost (broker CPU per message at 20,000 msg/s), SUBSCRIBE cost
#   retained  1k .. 1M retained messages: time to subscribe to one topic, to a 100-topic filter
#             and to `#`; RSS per retained message, published together and (up to 100,000,
#             on a fresh broker) each among 49 messages to another topic
#   startup   100,000 persistent sessions with 1,000,000 queued messages stored through the
#             broker (durability "periodic" while filling), then `serve` (durability "sync")
#             timed until its port accepts and /readyz answers, and its RSS
# Starling alone runs subs, retained and startup. bench/scale-report.py turns the lines into
# tables (stdout) and plots (bench/scale-*.png). Traffic goes to 127.0.0.0/8 only.
# --quick: small points, short measurements (a smoke run, to a temporary file).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. bench/peers.sh
COMMAND="bench/scale.sh $*"
CURVES=copy,subs,retained,startup,payload,fanout,clients
BROKERS=starling,mosquitto,rumqttd
CLIENTS=1000,2000,5000,10000,max
SUBS=1000,10000,100000,1000000
KINDS=exact,wildcard
RETAINED=1000,10000,100000,1000000
PAYLOADS=16,256,4096,65536,1048576
FANOUT=1,10,100,1000,10000
SESSIONS=100000
QUEUED=1000000
STARTS=3
DURATION=5
PRIORITY=rt
OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --curves) CURVES="$2"; shift ;;
        --brokers) BROKERS="$2"; shift ;;
        --clients) CLIENTS="$2"; shift ;;
        --subs) SUBS="$2"; shift ;;
        --kinds) KINDS="$2"; shift ;;
        --retained) RETAINED="$2"; shift ;;
        --payloads) PAYLOADS="$2"; shift ;;
        --fanout) FANOUT="$2"; shift ;;
        --sessions) SESSIONS="$2"; shift ;;
        --queued) QUEUED="$2"; shift ;;
        --starts) STARTS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --priority) PRIORITY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --quick)
            CLIENTS=200,1000; SUBS=1000,10000; RETAINED=1000,10000; PAYLOADS=16,65536
            FANOUT=1,100; SESSIONS=1000; QUEUED=10000; STARTS=1; DURATION=2
            [ -n "$OUT" ] || OUT=$(mktemp /tmp/scale-quick.XXXXXX.jsonl) ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$OUT" ] || OUT="$ROOT/bench/scale.jsonl"

RUMQTTD_VERSION=0.20.0
TOOLS="$ROOT/bench/.tools"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
GEN="$TARGET/release/starling-bench"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
has() { [[ ",$1," == *",$2,"* ]]; }

install_peers "$BROKERS" "$TOOLS" "$RUMQTTD_VERSION"
log "building Starling and the load generator (release)"
cargo build --release -q -p starling -p starling-bench

case "$PRIORITY" in
    rt) PRIO=(chrt -r 1); "${PRIO[@]}" true 2>/dev/null || PRIO=() ;;
    none) PRIO=() ;;
    *) echo "--priority rt|none" >&2; exit 2 ;;
esac
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
# Each client takes one descriptor in the broker and one in the generator; the 10 saturating
# pairs and the processes' own files need a few hundred more.
MAX_CLIENTS=$(( (NOFILE - 300) / 2 * 2 ))
[ "$MAX_CLIENTS" -gt 100000 ] && MAX_CLIENTS=100000

WORK=$(mktemp -d /tmp/starling-scale.XXXXXX)
BROKER_PID=
SINK_PID=
stop_pid() { # pid: TERM, up to 30 s, then KILL
    local pid=$1
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$BROKER_PID"
    stop_pid "$SINK_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
PORT=24000
: > "$OUT"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)
echo "{\"curve\":\"run\",\"command\":\"$COMMAND\",\"date\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"commit\":\"$COMMIT\",\"cpus\":$(nproc),\"nofile\":$NOFILE,\"max_clients\":$MAX_CLIENTS,\"priority\":\"$PRIORITY\",\"mosquitto\":\"$("$MOSQUITTO" -h 2>&1 | head -1 | tr -d '"')\",\"rumqttd\":\"$RUMQTTD_VERSION\",\"kernel\":\"$(uname -r)\"}" >> "$OUT"

# --- Brokers -----------------------------------------------------------------------------------
# The same settings for each: 127.0.0.1, anonymous, nothing persisted (but for start-up),
# queues of 1,000,000 messages, packets up to 4 MiB, no connection limit below the
# machine's, logging at warnings.

write_config() { # broker port dir durability http_port
    local broker=$1 port=$2 dir=$3 durability=${4:-memory} http=${5:-}
    case "$broker" in
        starling)
            {
                printf 'log_level = "warn"\ndata_dir = "%s/data"\n\n' "$dir"
                printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n\n' "$port"
                cat <<EOF
[limits]
max_packet_size = 4194304
max_queued_messages = 1000000
max_queued_bytes = 4294967296
max_inflight = 1000
max_connections = 1000000
max_subscriptions_per_client = 2000000
max_retained_messages = 10000000

[storage]
durability = "$durability"

EOF
                if [ -n "$http" ]; then
                    printf '[http]\nenabled = true\nbind = "127.0.0.1:%s"\n' "$http"
                else
                    printf '[http]\nenabled = false\n'
                fi
            } > "$dir/starling.toml" ;;
        mosquitto)
            mosquitto_conf "$port" > "$dir/mosquitto.conf" ;;
        rumqttd)
            rumqttd_toml "$port" 1000000 1000 > "$dir/rumqttd.toml"
            ;;
    esac
}

launch() { # broker port dir: starts it in the background, BROKER_PID
    local broker=$1 port=$2 dir=$3
    case "$broker" in
        starling)
            taskset -c 0 "${PRIO[@]}" "$TARGET/release/starling" serve \
                --config "$dir/starling.toml" > "$dir/broker.log" 2>&1 & ;;
        mosquitto)
            taskset -c 0 "${PRIO[@]}" "$MOSQUITTO" -c "$dir/mosquitto.conf" \
                > "$dir/broker.log" 2>&1 & ;;
        rumqttd)
            taskset -c 0 "${PRIO[@]}" "$TOOLS/bin/rumqttd" -q -c "$dir/rumqttd.toml" \
                > "$dir/broker.log" 2>&1 & ;;
    esac
    BROKER_PID=$!
}

wait_port() { # port: up to 60 s for it to accept, while the broker lives
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_broker() { # broker dir [durability http_port] -> PORT, BROKER_PID
    local broker=$1 dir=$2
    PORT=$((PORT + 1))
    mkdir -p "$dir"
    write_config "$broker" "$PORT" "$dir" "${3:-memory}" "${4:-}"
    launch "$broker" "$PORT" "$dir"
    if wait_port "$PORT"; then sleep 0.3; return 0; fi
    log "$broker did not start on port $PORT:"; tail -5 "$dir/broker.log" >&2 || true
    stop_broker
    return 1
}

stop_broker() { stop_pid "$BROKER_PID"; BROKER_PID=; }

# Appends the generator's line with the curve's fields added, or an error line.
emit() { # json-fields line
    python3 -c 'import json,sys
d=json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2])); print(json.dumps(d))' \
        "$1" "$2" >> "$OUT"
}
fail() { # json-fields log
    local err
    err=$(tail -c 400 "$2" 2>/dev/null | tr '\n"\\\t' '    ')
    log "  failed: $err"
    python3 -c 'import json,sys
d=json.loads(sys.argv[1]); d["error"]=sys.argv[2]; d["qualifies"]=False; print(json.dumps(d))' \
        "$1" "$err" >> "$OUT"
}

# One point: a fresh broker, the generator with the given arguments, its line.
point() { # broker fields-json generator-args...
    local broker=$1 fields=$2
    shift 2
    local dir="$WORK/p$((PORT + 1))-$broker"
    if ! start_broker "$broker" "$dir"; then
        fail "$fields" "$dir/broker.log"
        return
    fi
    local line
    if line=$(RUST_BACKTRACE=0 taskset -c 1 "${PRIO[@]}" "$GEN" "$@" --port "$PORT" \
        --label "$broker" --broker-pid "$BROKER_PID" 2> "$dir/gen.log"); then
        emit "$fields" "$line"
    else
        fail "$fields" "$dir/gen.log"
    fi
    stop_broker
    rm -rf "$dir"
}

IFS=, read -r -a PEERS <<< "$BROKERS"
START=$(date +%s)

# --- copy: the loopback copy limit -------------------------------------------------------------
if has "$CURVES" copy; then
    IFS=, read -r -a sizes <<< "$PAYLOADS"
    for size in "${sizes[@]}"; do
        PORT=$((PORT + 1))
        log "copy: $size B"
        taskset -c 0 "${PRIO[@]}" "$GEN" scale sink --port "$PORT" > /dev/null 2>&1 &
        SINK_PID=$!
        for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
        if line=$(taskset -c 1 "${PRIO[@]}" "$GEN" scale copy --port "$PORT" --size "$size" \
            --duration 3 2> "$WORK/copy.log"); then
            emit "{\"point\":$size}" "$line"
        else
            fail "{\"curve\":\"copy\",\"broker\":\"tcp\",\"point\":$size}" "$WORK/copy.log"
        fi
        stop_pid "$SINK_PID"; SINK_PID=
    done
fi

# --- subs: publish and SUBSCRIBE cost against the number of subscriptions ----------------------
if has "$CURVES" subs; then
    IFS=, read -r -a counts <<< "$SUBS"
    IFS=, read -r -a kinds <<< "$KINDS"
    for kind in "${kinds[@]}"; do
        for n in "${counts[@]}"; do
            log "subs: $n $kind"
            point starling "{\"curve\":\"subs\",\"point\":$n}" scale subs --subs "$n" \
                --kind "$kind" --warmup 2 --duration $((DURATION + 3))
        done
    done
fi

# --- retained ----------------------------------------------------------------------------------
if has "$CURVES" retained; then
    IFS=, read -r -a counts <<< "$RETAINED"
    for n in "${counts[@]}"; do
        log "retained: $n"
        point starling "{\"curve\":\"retained\",\"point\":$n}" scale retained --count "$n"
    done
    # The same, each retained message among 49 others (up to 100,000: 5 M messages).
    for n in "${counts[@]}"; do
        [ "$n" -le 100000 ] || continue
        log "retained among a stream: $n"
        point starling "{\"curve\":\"retained-among\",\"point\":$n}" scale retained \
            --count "$n" --among-stream
    done
fi

# --- startup: a store with many sessions and queued messages -----------------------------------
if has "$CURVES" startup; then
    dir="$WORK/startup"
    mkdir -p "$dir"
    HTTP=$((PORT + 1000))
    log "startup: filling $SESSIONS sessions, $QUEUED queued messages"
    fields="{\"curve\":\"fill\",\"point\":$SESSIONS}"
    if start_broker starling "$dir" periodic "$HTTP"; then
        if line=$(RUST_BACKTRACE=0 taskset -c 1 "${PRIO[@]}" "$GEN" scale fill --port "$PORT" \
            --label starling --broker-pid "$BROKER_PID" --sessions "$SESSIONS" \
            --messages "$QUEUED" 2> "$dir/gen.log"); then
            emit "$fields" "$line"
            filled=1
        else
            fail "$fields" "$dir/gen.log"
            filled=0
        fi
        stop_broker
        if [ "$filled" = 1 ]; then
            store=$(du -sb "$dir/data" | cut -f1)
            write_config starling "$PORT" "$dir" sync "$HTTP"
            for s in $(seq "$STARTS"); do
                log "startup: start $s of $STARTS"
                t0=$(date +%s%N)
                launch starling "$PORT" "$dir"
                fields="{\"curve\":\"startup\",\"point\":$SESSIONS,\"queued\":$QUEUED,\"start\":$s,\"store_bytes\":$store}"
                if line=$(taskset -c 1 "$GEN" scale ready --port "$PORT" --label starling \
                    --broker-pid "$BROKER_PID" --since-ns "$t0" --http-port "$HTTP" \
                    2> "$dir/ready.log"); then
                    emit "$fields" "$line"
                else
                    fail "$fields" "$dir/ready.log"
                fi
                stop_broker
            done
        fi
    else
        fail "$fields" "$dir/broker.log"
    fi
    rm -rf "$dir"
fi

# --- payload: MB/s from 16 B to 1 MB -----------------------------------------------------------
if has "$CURVES" payload; then
    IFS=, read -r -a sizes <<< "$PAYLOADS"
    for size in "${sizes[@]}"; do
        # At most about 4 MiB undelivered per publisher, and at least 4 messages.
        window=$(( 4194304 / size )); [ "$window" -gt 1000 ] && window=1000
        [ "$window" -lt 4 ] && window=4
        for broker in "${PEERS[@]}"; do
            log "payload: $size B on $broker"
            point "$broker" "{\"curve\":\"payload\",\"point\":$size}" --scenario p2p-qos0 \
                --payload "$size" --window "$window" --warmup 1 --duration "$DURATION" \
                --min-broker-util 0.9
        done
    done
fi

# --- fanout: 1 .. 10,000 subscribers of one topic ----------------------------------------------
if has "$CURVES" fanout; then
    IFS=, read -r -a counts <<< "$FANOUT"
    for n in "${counts[@]}"; do
        # About 100,000 deliveries outstanding at most (10 .. 1,000 messages).
        window=$(( 100000 / n )); [ "$window" -gt 1000 ] && window=1000
        [ "$window" -lt 10 ] && window=10
        for broker in "${PEERS[@]}"; do
            log "fanout: 1 to $n on $broker"
            point "$broker" "{\"curve\":\"fanout\",\"point\":$n}" --scenario fan-out-qos0 \
                --subscribers "$n" --window "$window" --warmup 1 --duration "$DURATION" \
                --min-broker-util 0.9
        done
    done
fi

# --- clients: up to the open-file limit --------------------------------------------------------
if has "$CURVES" clients; then
    reason="the open-file limit of $NOFILE (hard; each client needs a descriptor in the broker and one in the generator)"
    [ "$MAX_CLIENTS" -ge 100000 ] && reason="100,000 is the largest point of the curve"
    echo "{\"curve\":\"clients-limit\",\"nofile\":$NOFILE,\"max_clients\":$MAX_CLIENTS,\"reason\":\"$reason\"}" >> "$OUT"
    log "clients: at most $MAX_CLIENTS: $reason"
    IFS=, read -r -a counts <<< "$CLIENTS"
    for n in "${counts[@]}"; do
        [ "$n" = max ] && n=$MAX_CLIENTS
        if [ "$n" -gt "$MAX_CLIENTS" ]; then
            log "clients: $n is above the limit, skipped"
            echo "{\"curve\":\"clients\",\"point\":$n,\"skipped\":\"above $MAX_CLIENTS, $reason\",\"qualifies\":false}" >> "$OUT"
            continue
        fi
        # One source address has 28,000 ports (ip_local_port_range): beyond 25,000 clients,
        # several, 127.0.0.1 .. 127.0.0.N.
        sources=$(( n / 25000 + 1 ))
        for broker in "${PEERS[@]}"; do
            log "clients: $n on $broker"
            point "$broker" "{\"curve\":\"clients\",\"point\":$n}" scale clients \
                --clients "$n" --sources "$sources" --warmup 2 --duration $((DURATION * 2)) \
                --fast-duration "$DURATION"
        done
    done
fi

ELAPSED=$(( $(date +%s) - START ))
echo "{\"curve\":\"end\",\"elapsed_s\":$ELAPSED}" >> "$OUT"
stop_broker

# Tables and plots: matplotlib from the repository's .venv, installed there if missing.
PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib into .venv"
    [ -x "$ROOT/.venv/bin/python" ] || python3 -m venv "$ROOT/.venv"
    PY="$ROOT/.venv/bin/python"
    "$ROOT/.venv/bin/pip" install -q matplotlib || log "matplotlib could not be installed: tables only"
fi
PLOTS="$ROOT/bench"
[ "$OUT" = "$ROOT/bench/scale.jsonl" ] || PLOTS=$(dirname "$OUT")
"$PY" bench/scale-report.py "$OUT" --plots "$PLOTS"
log "done in ${ELAPSED}s: $OUT, plots in $PLOTS/scale-*.png"
