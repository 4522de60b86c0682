#!/usr/bin/env bash
# Where `sync`'s commit cycle waits (issue 23, item 5): the fsync time of the data directory's
# disk (4 KiB written and fdatasync'ed, 2,000 times), then the durability benchmark's p2p QoS 1
# scenario with persistent subscribers against Starling in `sync` with its HTTP listener on,
# and the store's own figures scraped afterwards: commits, the time each took, the ops each
# wrote (after write absorption) and the message records never written. Same pinning and
# priority as bench/durability.sh. Prints one JSON line per build.
#
#   bench/commit-cycle.sh [--rounds N]     (BENCH_BIN=DIR: binaries from DIR, not built)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh commit-cycle "$@"
python3 - "$WORK" <<'PYEOF'
import json, os, statistics, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
block = b"x" * 4096
times = []
for i in range(2000):
    os.pwrite(fd, block, (i % 64) * 4096)
    t = time.perf_counter()
    os.fdatasync(fd)
    times.append((time.perf_counter() - t) * 1e6)
os.close(fd)
times.sort()
print(json.dumps({"fdatasync_us": {"p50": round(times[1000]), "p99": round(times[1980]),
                                   "mean": round(statistics.mean(times))}}))
PYEOF
for round in $(seq "$ROUNDS"); do
    port=$((22500 + round)); http=$((22600 + round)); dir="$WORK/run-$round"
    mkdir -p "$dir/data"
    printf '[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "sync"\n[http]\nenabled = true\nbind = "127.0.0.1:%s"\n' \
        "$http" > "$dir/s.toml"
    RUST_LOG=warn taskset -c 0 $RT "$BIN/starling" serve --config "$dir/s.toml" \
        --bind 127.0.0.1:$port --data-dir "$dir/data" 2>"$dir/log" &
    pid=$!
    wait_port $port
    run=$(taskset -c 1 $RT "$BIN/starling-bench" --port $port --scenario p2p-qos1 --persistent \
        --broker-pid $pid --label starling-sync --round "$round" --warmup 3 --duration 10 || true)
    metrics=$(python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
        "http://127.0.0.1:$http/metrics")
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
    RUN="$run" METRICS="$metrics" python3 - <<'PYEOF'
import json, os, re
run = json.loads(os.environ["RUN"])
m = os.environ["METRICS"]
def val(name):
    x = re.search(r"^" + re.escape(name) + r" ([0-9.e+]+)$", m, re.M)
    return float(x.group(1)) if x else None
def buckets(name):
    out, prev = {}, 0.0
    for le, v in re.findall(r"^" + re.escape(name) + r'_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', m, re.M):
        out[le] = int(float(v) - prev)
        prev = float(v)
    return out
commits = val("starling_store_commits_total") or 0
print(json.dumps({
    "round": run.get("round"), "msgs_per_s": run.get("rate_median_per_s"),
    "latency_us": run.get("latency_us"), "broker_cpu_util": run.get("broker_cpu_util"),
    "sent": run.get("sent"), "commits": commits,
    "commit_ms_mean": round(1000 * (val("starling_store_commit_duration_seconds_sum") or 0) / max(commits, 1), 3),
    "commit_s_buckets": buckets("starling_store_commit_duration_seconds"),
    "ops_per_commit_mean": round((val("starling_store_batch_operations_sum") or 0) / max(commits, 1), 1),
    "ops_buckets": buckets("starling_store_batch_operations"),
    "records_undone": val("starling_store_records_undone_total"),
}))
PYEOF
done
