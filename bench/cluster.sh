#!/usr/bin/env bash
# Messages and client ids across the nodes of a cluster (issue 20): p2p QoS 0 and QoS 1
# throughput and the latency scenario (10,000 msg/s, QoS 1: p50/p99/p99.9) with the
# publishers on node 1 and the subscribers on node 2 of a three-node cluster on 127.0.0.1-3,
# against one node with publishers and subscribers on it; then the cost of a CONNECT that
# takes a client id over (starling-bench --scenario takeover: 16 clients, each with its own
# client id, CONNECT again and again, MQTT 5 with clean start, alternately to node 1 and
# node 2, each CONNECT taking the id over from the client's previous connection, which is
# still open: connects/s and CONNECT-to-CONNACK p50/p99/p99.9), against the same on one node,
# and on node 1 of the cluster alone (every CONNECT a commit, no move between nodes); the same
# with persistent sessions (Clean Start 0, expiry 300 s: the session moves with its client,
# fetched from the node that had it); and CONNECTs of new client ids (the `connections`
# scenario: 5,000 held, 16 at a time) on each. --takeovers-only: the takeovers alone.
# Interleaved in the same run: every round runs each setup once. Nothing is pinned: three
# broker processes and the generator share the cores, so only the ratio cluster / single
# node in the same run means anything. Config: that of bench/compare.sh (bench/peers.sh:
# memory durability; the cluster's Raft log is a file in the work directory, written durably
# per commit) plus `[cluster]`. One JSON line per run in FILE (default a temporary file; the
# cluster's takeover lines carry the leader in `tag`); the medians on stdout, and what the
# nodes logged (warnings and errors) on stderr. Traffic stays on 127.0.0.0/8.
#
#   bench/cluster.sh [--rounds N] [--duration S] [--out FILE] [--takeovers-only]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=3
MEASURE=10
OUT=""
TAKEOVERS_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) MEASURE="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --takeovers-only) TAKEOVERS_ONLY=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
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

# The node that leads the cluster now, as node 1 sees it.
leader() {
    curl -fsS "http://127.0.0.1:28081/api/v1/cluster" |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get("leader"))'
}

# What the nodes of SETUP logged (log_level "warn": every line is a warning or an error).
report_logs() { # SETUP ROUND
    local dirs
    if [ "$1" = cluster ]; then dirs="n1 n2 n3"; else dirs="single"; fi
    for d in $dirs; do
        local f="$WORK/$d/log"
        if [ -s "$f" ]; then
            log "round $2: $d logged $(wc -l < "$f") lines ($(grep -c ERROR "$f" || true) errors); the last:"
            tail -n 3 "$f" >&2
        fi
    done
}

run() { # SETUP SCENARIO ROUND [ARGS...]: cluster = A on node 1, B on node 2
    local args=(--scenario "$2" --label "$1" --round "$3" --duration "$MEASURE"
        --min-broker-util 0 --max-gen-util 1 "${@:4}")
    if [ "$1" = cluster ]; then
        args+=(--host 127.0.0.1 --port 21881 --sub-addr 127.0.0.2:21882)
    else
        args+=(--host 127.0.0.1 --port 21883)
    fi
    "$BIN/starling-bench" "${args[@]}" >> "$OUT"
}

takeovers() { # SETUP ROUND: across nodes 1 and 2 and on node 1 alone; on one node, once
    if [ "$1" = cluster ]; then
        local tag="leader=$(leader)"
        run cluster takeover "$2" --tag "$tag" --alt-addr 127.0.0.2:21882
        run cluster takeover "$2" --tag "$tag" --alt-addr 127.0.0.1:21881
        run cluster takeover "$2" --tag "$tag" --alt-addr 127.0.0.2:21882 --persistent
        run cluster takeover "$2" --tag "$tag" --alt-addr 127.0.0.1:21881 --persistent
    else
        run single takeover "$2"
        run single takeover "$2" --persistent
    fi
    [ "$TAKEOVERS_ONLY" -eq 1 ] && return 0
    # New client ids last: the cluster releases each of them through its log when they go.
    run "$1" connections "$2" --connections 5000 --concurrency 16
}

for round in $(seq 1 "$ROUNDS"); do
    for setup in single cluster; do
        log "round $round: $setup"
        if [ "$setup" = single ]; then start_single; else start_cluster; fi
        if [ "$TAKEOVERS_ONLY" -eq 0 ]; then
            for scenario in p2p-qos0 p2p-qos1 latency; do
                run "$setup" "$scenario" "$round"
            done
        fi
        takeovers "$setup" "$round"
        stop_all
        report_logs "$setup" "$round"
    done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(setup, scenario, get, where=lambda r: True):
    vals = []
    for r in runs:
        if r["broker"] == setup and r["scenario"] == scenario and where(r):
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
rows = [(label, sc, get, None, None) for label, sc, get in rows]
# The p2p and latency rows' cluster column: publishers on node 1, subscribers on node 2. The
# takeovers': node 1 <-> node 2 (`across`) or node 1 alone (`alone`); the single node's
# column is A = B on it either way.
def both(a, b):
    return lambda r: a(r) and b(r)
across, alone = (lambda r: not r["same_node"]), (lambda r: r["same_node"])
clean, kept = (lambda r: r.get("clean_start", True)), (lambda r: not r.get("clean_start", True))
for name, where in (("takeover node 1 <-> node 2", both(across, clean)),
                    ("takeover on node 1", both(alone, clean)),
                    ("takeover with the session, node 1 <-> node 2", both(across, kept)),
                    ("takeover with the session, on node 1", both(alone, kept))):
    single = kept if "session" in name else clean
    rows.append((f"{name}, connects/s", "takeover", lambda r: r["connect_rate_per_s"], where,
                 single))
    rows += [(f"{name}, CONNACK {p} us", "takeover", lambda r, p=p: r["latency_us"][p], where,
              single)
             for p in ("p50", "p99", "p999")]
    rows.append((f"{name}, old connection ended p50 us", "takeover",
                 lambda r: r["takeover_us"]["p50"], where, single))
    rows.append((f"{name}, Session Present 1 of connects", "takeover",
                 lambda r: r["session_present"] / max(r["connects"], 1), where, single))
rows.append(("new client ids (node 1), connects/s", "connections",
             lambda r: r["connect_rate_per_s"], None, None))
print("| measure | single node | cluster | cluster / single |")
print("| --- | --- | --- | --- |")
for label, sc, get, where, single in rows:
    s = med("single", sc, get, single or (lambda r: True))
    c = med("cluster", sc, get, where or (lambda r: True))
    if s is not None and c is not None:
        ratio = f"{c / s:.2f}" if s else "-"
        fmt = (lambda v: f"{v:,.0f}") if max(s, c) >= 10 else (lambda v: f"{v:.3f}")
        print(f"| {label} | {fmt(s)} | {fmt(c)} | {ratio} |")
# Across nodes, CONNECTs to node 1 and to node 2 apart (one of them may lead, the other
# forwards its claims to the leader).
for i, node in ((0, "node 1"), (1, "node 2")):
    qs = [med("cluster", "takeover", lambda r, p=p: r["by_addr"][i]["latency_us"][p],
              both(across, clean))
          for p in ("p50", "p99", "p999")]
    if None not in qs:
        print(f"takeover node 1 <-> node 2, CONNECTs to {node}: CONNACK p50/p99/p99.9 "
              + " / ".join(f"{q:,.0f}" for q in qs) + " us")
# Not medians: every refusal, failure and old connection that did not end, in all rounds.
for r in runs:
    if r["scenario"] == "takeover":
        ends = r.get("old_connections", {})
        odd = {k: v for k, v in ends.items() if k != "disconnect_0x8e"}
        if r["refused"] or r["failed"] or odd or r.get("errors"):
            print(f"round {r.get('round')} {r['broker']} {r['addr']} -> {r['alt_addr']}: "
                  f"refused {r['refused_codes']}, failed {r['failed']}, old connections {ends}, "
                  f"errors {r.get('errors', [])[:2]}")
    elif r["scenario"] == "connections" and r["failed"]:
        print(f"round {r.get('round')} {r['broker']} connections: failed {r['failed']}, "
              f"errors {r.get('errors', [])}")
leaders = [r.get("tag") for r in runs if r["scenario"] == "takeover" and r["broker"] == "cluster"]
print(f"cluster leaders during the takeover runs: {leaders[::2]}")
print(f"({len(runs)} runs in {sys.argv[1]})")
EOF
