#!/usr/bin/env bash
# What the HTTP listener costs: Starling with `[http] enabled = false` against Starling with it
# on and a scraper reading /metrics every second (curl, on the generator's core), in p2p QoS 0
# and fan-out QoS 0 and QoS 1. Same pinning and priority as bench/compare.sh, memory
# durability as there. Prints one JSON line per run; bench/RESULTS.md quotes the medians.
#
#   bench/http.sh [--rounds N]
#   BASELINE=/path/to/older/starling bench/http.sh   # adds that binary (no [http] section)
#
# The order of the variants rotates each round so that drift on the machine does not favour one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh http "$@"
port=24000
run() { # label scenario
    local label=$1 scenario=$2 dir pid scraper="" bin="$BIN/starling" http
    port=$((port + 2)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    case "$label" in
        http-off) http=$'[http]\nenabled = false' ;;
        http-scraped) http=$(printf '[http]\nbind = "127.0.0.1:%s"' $((port + 1))) ;;
        baseline) http=""; bin=$BASELINE ;;
    esac
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "memory"\n%s\n' \
        "$port" "$http" > "$dir/s.toml"
    RUST_LOG=warn taskset -c 0 $RT "$bin" serve --config "$dir/s.toml" \
        --data-dir "$dir/data" 2>"$dir/log" &
    pid=$!
    wait_port $port
    if [ "$label" = http-scraped ]; then
        # The HTTP listener opens after the MQTT listeners.
        wait_port $((port + 1))
        # Bounded: at most one scrape a second for as long as the run can last.
        (for _ in $(seq 60); do
            curl -sf -o /dev/null "http://127.0.0.1:$((port + 1))/metrics" || echo "scrape failed" >&2
            sleep 1
        done) &
        scraper=$!
        local page
        page=$(curl -sf "http://127.0.0.1:$((port + 1))/metrics" || true)
        case "$page" in
            *starling_messages_received_total*) ;;
            *) echo "no metrics on the HTTP listener" >&2; kill "$scraper"; exit 1 ;;
        esac
    fi
    taskset -c 1 $RT "$BIN/starling-bench" --port $port --scenario "$scenario" \
        --broker-pid $pid --label "$label" --warmup 3 --duration 10 || true
    [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true; }
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
}
labels=(http-off http-scraped)
[ -n "${BASELINE:-}" ] && labels+=(baseline)
for round in $(seq "$ROUNDS"); do
    for scenario in p2p-qos0 fan-out-qos0 fan-out-qos1; do
        n=${#labels[@]}
        for i in $(seq 0 $((n - 1))); do
            run "${labels[$(( (i + round) % n ))]}" "$scenario"
        done
    done
done
