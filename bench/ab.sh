#!/usr/bin/env bash
# Two Starling builds side by side on the scenarios of bench/compare.sh, interleaved, to show
# what a change did (issue 23, item 7: the existing scenarios stay within 3 % or improve).
#
#   bench/ab.sh --before DIR [--after DIR] [--scenarios p2p-qos0,...] [--rounds N]
#               [--duration S] [--out FILE] [--durability MODE] [--persistent]
#
# --durability sync|periodic|memory: the brokers' `[storage] durability` (default memory, as
# in bench/compare.sh); --persistent: the generator's subscribers keep their sessions (clean
# session 0), so a durable broker stores every message queued for them (bench/durability.sh's
# throughput scenario, two builds side by side).
#
# DIR holds a release build's `starling` (the after build defaults to target/release, built
# here). Every round runs each scenario once per build, the order alternating between rounds;
# a fresh broker each time, pinned to core 0 with the generator on core 1, both at SCHED_RR
# priority 1 when allowed, the config of bench/compare.sh (bench/peers.sh). Writes one JSON
# line per run (label `before` or `after`) to FILE (default a temporary file) and prints the
# medians and the after/before ratio of each scenario's main figure. Traffic goes to
# 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

BEFORE=""
AFTER=""
SCENARIOS=p2p-qos0,p2p-qos1,fan-out-qos0,fan-out-qos1
ROUNDS=3
WARMUP=2
MEASURE=8
OUT=""
DURABILITY=memory
GEN_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --before) BEFORE="$2"; shift ;;
        --after) AFTER="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration) MEASURE="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --durability) DURABILITY="$2"; shift ;;
        --persistent) GEN_ARGS+=(--persistent) ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$BEFORE" ] || { echo "--before DIR is required" >&2; exit 2; }
[ -x "$BEFORE/starling" ] || { echo "$BEFORE/starling: not an executable" >&2; exit 2; }
if [ -z "$AFTER" ]; then
    cargo build --release -q -p starling -p starling-bench
    AFTER=${CARGO_TARGET_DIR:-target}/release
fi
BENCH=${CARGO_TARGET_DIR:-target}/release/starling-bench
[ -x "$BENCH" ] || cargo build --release -q -p starling-bench

WORK=$(mktemp -d /tmp/starling-ab.XXXXXX)
trap 'pkill -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
[ -n "$OUT" ] || OUT=$(mktemp /tmp/starling-ab-XXXXXX.jsonl)
: > "$OUT"
PRIO=(chrt -r 1)
MIN_UTIL=0.90
"${PRIO[@]}" true 2>/dev/null || { PRIO=(); MIN_UTIL=0.95; }

. bench/peers.sh
case "$DURABILITY" in
    memory|periodic|sync) ;;
    *) echo "--durability: memory, periodic or sync, not $DURABILITY" >&2; exit 2 ;;
esac
starling_toml | sed "s/^durability = .*/durability = \"$DURABILITY\"/" > "$WORK/starling.toml"

PORT=22000
run() { # label dir scenario round
    local label=$1 dir=$2 scenario=$3 round=$4
    PORT=$((PORT + 1))
    taskset -c 0 "${PRIO[@]}" "$dir/starling" serve --config "$WORK/starling.toml" \
        --bind "127.0.0.1:$PORT" --data-dir "$WORK/data-$PORT" > "$WORK/broker-$PORT.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.3
    if line=$(taskset -c 1 "${PRIO[@]}" "$BENCH" --port "$PORT" --scenario "$scenario" \
        --label "$label" --round "$round" --broker-pid "$pid" --warmup "$WARMUP" "${GEN_ARGS[@]}" \
        --duration "$MEASURE" --min-broker-util "$MIN_UTIL" 2> "$WORK/gen-$PORT.log"); then
        echo "$line" >> "$OUT"
    else
        echo "  $label $scenario round $round failed: $(tail -c 200 "$WORK/gen-$PORT.log")" >&2
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

IFS=, read -ra LIST <<< "$SCENARIOS"
for round in $(seq "$ROUNDS"); do
    for scenario in "${LIST[@]}"; do
        if [ $((round % 2)) = 1 ]; then order=(before after); else order=(after before); fi
        for label in "${order[@]}"; do
            dir=$BEFORE
            [ "$label" = after ] && dir=$AFTER
            echo "[$(date +%T)] round $round: $scenario, $label" >&2
            run "$label" "$dir" "$scenario" "$round"
        done
    done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def figures(r):
    if r.get("error"):
        return {}
    if r["scenario"] == "connections":
        return {"bytes per idle connection": r.get("rss_per_conn_bytes"),
                "connections/s": r.get("connect_rate_per_s")}
    if r["scenario"] == "takeover":
        lat = r.get("latency_us") or {}
        return {"CONNECTs/s": r.get("connect_rate_per_s"), "CONNACK p50 µs": lat.get("p50"),
                "CONNACK p99 µs": lat.get("p99")}
    if r["scenario"] == "latency":
        lat = r.get("latency_us") or {}
        return {"p99 µs": lat.get("p99"), "p99.9 µs": lat.get("p999")}
    return {"msg/s (median second)": r.get("rate_median_per_s"),
            "msg per broker CPU-s": r.get("msgs_per_broker_cpu_s")}
by = {}
for r in runs:
    for k, v in figures(r).items():
        if v is not None:
            by.setdefault((r["scenario"], k), {}).setdefault(r["broker"], []).append(v)
print("| scenario | figure | before (median, runs) | after (median, runs) | after/before |")
print("| --- | --- | --- | --- | ---: |")
for (s, k), d in by.items():
    b, a = d.get("before", []), d.get("after", [])
    if not b or not a:
        continue
    mb, ma = statistics.median(b), statistics.median(a)
    fmt = lambda xs: " / ".join(f"{x:,.0f}" for x in xs)
    print(f"| {s} | {k} | {mb:,.0f} ({fmt(b)}) | {ma:,.0f} ({fmt(a)}) | {ma / mb:.3f} |")
EOF
echo "raw lines: $OUT" >&2
