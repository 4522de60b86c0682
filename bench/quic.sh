#!/usr/bin/env bash
# MQTT over QUIC beside MQTT over TLS (TCP) on one broker: the connect rate (full handshakes,
# CONNECT, CONNACK, DISCONNECT; 10 at a time) and p2p QoS 1 (10 pairs, 64-byte payloads, 64
# unacknowledged per publisher) at full speed and at 10,000 msg/s for latency. The broker has
# a "tls" and a "quic" listener with the same certificate (made here with openssl), memory
# durability; broker on core 0, generator on core 1, as bench/compare.sh. Prints one JSON line
# per run (bench/quic.jsonl holds the ones bench/RESULTS.md quotes).
#
#   bench/quic.sh [--rounds N]
#
# The order of the transports alternates each round so that drift does not favour one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cargo build --release -q -p starling -p starling-bench
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d "/tmp/starling-quic.XXXXXX")
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
RT="chrt -r 1"
$RT true 2>/dev/null || RT=""

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/ext" -out "$WORK/server.pem" 2>/dev/null

port=25000
for listener in tls quic; do
    [ $listener = quic ] && p=$((port + 1)) || p=$port
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nprotocol = "%s"\nallow_anonymous = true\ncert_file = "%s"\nkey_file = "%s"\n' \
        "$p" "$listener" "$WORK/server.pem" "$WORK/server.key"
done > "$WORK/s.toml"
printf '[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "memory"\n[http]\nenabled = false\n' >> "$WORK/s.toml"

run() { # transport measure [extra args...]
    local transport=$1 measure=$2 addr
    shift 2
    [ "$transport" = quic ] && addr="127.0.0.1:$((port + 1))" || addr="127.0.0.1:$port"
    taskset -c 1 $RT "$BIN/starling-bench" transport --transport "$transport" \
        --measure "$measure" --addr "$addr" --cafile "$WORK/ca.pem" --broker-pid "$pid" \
        --label "round $round" "$@" || true
}

mkdir -p "$WORK/data"
RUST_LOG=warn taskset -c 0 $RT "$BIN/starling" serve --config "$WORK/s.toml" \
    --data-dir "$WORK/data" 2>"$WORK/log" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="tls quic"; else order="quic tls"; fi
    for t in $order; do run "$t" connect --connections 2000 --concurrency 10; done
    for t in $order; do run "$t" p2p-qos1; done
    for t in $order; do run "$t" p2p-qos1 --rate 10000; done
done
