#!/usr/bin/env bash
# Messages across the nodes of a cluster (issue 20): p2p QoS 0 and QoS 1 throughput and the
# latency scenario (10,000 msg/s, QoS 1: p50/p99/p99.9) with the publishers on node 1 and the
# subscribers on node 2 of a three-node cluster on 127.0.0.1-3, against one node with
# publishers and subscribers on it, interleaved in the same run (every round runs each
# setup once). Nothing is pinned: three broker processes and the generator share the cores,
# so only the ratio cluster / single node in the same run means anything. Config: that of
# bench/compare.sh (bench/peers.sh: memory durability) plus `[cluster]`. One JSON line per
# run in FILE (default a temporary file); the medians on stdout. Traffic stays on 127.0.0.0/8.
#
#   bench/cluster.sh [--rounds N] [--duration S] [--out FILE]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=3
MEASURE=10
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) MEASURE="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
. bench/peers.sh
cargo build --release -q -p starling -p starling-bench
BIN="$ROOT/target/release"
WORK=$(mktemp -d)
OUT=${OUT:-$WORK/cluster.jsonl}
: > "$OUT"
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1:$2" >&2
    return 1
}

# single: one node on 127.0.0.1:21883.
start_single() {
    local dir="$WORK/single"
    rm -rf "$dir"; mkdir -p "$dir"
    starling_toml > "$dir/starling.toml"
    "$BIN/starling" serve --config "$dir/starling.toml" --data-dir "$dir/data" \
        --bind 127.0.0.1:21883 --http-bind 127.0.0.1:0 2>"$dir/log" &
    PIDS+=($!)
    wait_port 127.0.0.1 21883
}

# cluster: nodes 1-3 on 127.0.0.N:2188N (MQTT) and :2794N (cluster), a leader elected and
# every incarnation announced before the run.
start_cluster() {
    local seeds='"1@127.0.0.1:27941", "2@127.0.0.2:27942", "3@127.0.0.3:27943"'
    for n in 1 2 3; do
        local dir="$WORK/n$n"
        rm -rf "$dir"; mkdir -p "$dir"
        {
            starling_toml
            printf '\n[cluster]\nenabled = true\nnode_id = %s\nbind = "127.0.0.%s:2794%s"\n' "$n" "$n" "$n"
            printf 'seeds = [%s]\nheartbeat_ms = 100\nelection_timeout_ms = 500\n' "$seeds"
        } > "$dir/starling.toml"
        "$BIN/starling" serve --config "$dir/starling.toml" --data-dir "$dir/data" \
            --bind "127.0.0.$n:2188$n" --http-bind "127.0.0.$n:2808$n" 2>"$dir/log" &
        PIDS+=($!)
    done
    for n in 1 2 3; do wait_port "127.0.0.$n" "2188$n"; done
    for _ in $(seq 1 100); do
        local ok=0
        for n in 1 2 3; do
            if curl -fsS "http://127.0.0.$n:2808$n/api/v1/cluster" | grep -q '"announced":true'; then
                ok=$((ok + 1))
            fi
        done
        [ "$ok" -eq 3 ] && return 0
        sleep 0.2
    done
    echo "the cluster did not form" >&2
    return 1
}

run() { # SETUP SCENARIO ROUND
    local args=(--scenario "$2" --label "$1" --round "$3" --duration "$MEASURE"
        --min-broker-util 0 --max-gen-util 1)
    if [ "$1" = cluster ]; then
        args+=(--host 127.0.0.1 --port 21881 --sub-addr 127.0.0.2:21882)
    else
        args+=(--host 127.0.0.1 --port 21883)
    fi
    "$BIN/starling-bench" "${args[@]}" >> "$OUT"
}

for round in $(seq 1 "$ROUNDS"); do
    for setup in single cluster; do
        log "round $round: $setup"
        if [ "$setup" = single ]; then start_single; else start_cluster; fi
        for scenario in p2p-qos0 p2p-qos1 latency; do
            run "$setup" "$scenario" "$round"
        done
        stop_all
    done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(setup, scenario, get):
    vals = []
    for r in runs:
        if r["broker"] == setup and r["scenario"] == scenario:
            try:
                vals.append(get(r))
            except (KeyError, TypeError):
                pass
    return statistics.median(vals) if vals else None
rows = [("p2p-qos0 msg/s", "p2p-qos0", lambda r: r["rate_median_per_s"]),
        ("p2p-qos1 msg/s", "p2p-qos1", lambda r: r["rate_median_per_s"]),
        ("p2p-qos0 delivery ratio", "p2p-qos0", lambda r: r["delivery_ratio"]),
        ("p2p-qos1 delivery ratio", "p2p-qos1", lambda r: r["delivery_ratio"])]
rows += [(f"latency {p} us", "latency", lambda r, p=p: r["latency_us"][p]) for p in ("p50", "p99", "p999")]
print("| measure | single node | cluster (pub node 1, sub node 2) | cluster / single |")
print("| --- | --- | --- | --- |")
for label, sc, get in rows:
    s, c = med("single", sc, get), med("cluster", sc, get)
    if s is not None and c is not None:
        ratio = f"{c / s:.2f}" if s else "-"
        fmt = (lambda v: f"{v:,.0f}") if max(s, c) >= 10 else (lambda v: f"{v:.3f}")
        print(f"| {label} | {fmt(s)} | {fmt(c)} | {ratio} |")
print(f"({len(runs)} runs in {sys.argv[1]})")
EOF
