#!/usr/bin/env bash
# What an ACL costs: Starling without and with an ACL file on its listener, with a JWT whose
# ACL claim decides every check (`starling-jwt`), and with an HTTP service answering the ACL
# checks through the cache (`starling-http`; the service, bench/auth-service.py, allows
# everything and counts its requests), in the scenarios
# where every message passes a check (p2p QoS 0 and QoS 1: a publish check per message and a
# read check per delivery; fan-in: ten topics into one wildcard subscriber; fan-out QoS 1: a
# read check per delivery to 100 subscribers). Same pinning and priority as bench/compare.sh,
# memory durability as there. Prints one JSON line per run; bench/RESULTS.md quotes the
# medians.
#
#   bench/acl.sh [--rounds N]
#
# The ACL is a realistic one for anonymous clients: 40 rules that do not match before the
# ones that do, a deny rule, and per-client patterns.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh acl "$@"
{
    for i in $(seq 40); do echo "topic readwrite site$i/+/telemetry/#"; done
    echo "topic deny bench/secret/#"
    echo "topic readwrite bench/#"
    echo "pattern write devices/%c/telemetry"
    echo "pattern read devices/%c/commands/#"
} > "$WORK/acl"
SECRET="a secret of at least thirty-two bytes for HS256"
TOKEN=$(python3 bench/auth-service.py token "$SECRET")
SERVICE_PORT=22999
python3 bench/auth-service.py serve $SERVICE_PORT "$WORK/service-requests" &
wait_port $SERVICE_PORT
port=23000
run() { # label scenario
    local label=$1 scenario=$2 dir pid acl="" extra="" creds=()
    port=$((port + 1)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    case "$label" in
        starling-acl) acl="acl_file = \"$WORK/acl\"" ;;
        starling-jwt)
            acl='auth = ["jwt"]'
            extra="[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret = \"$SECRET\"\n"
            creds=(--username bench --password "$TOKEN") ;;
        starling-http)
            acl='acl = ["http"]'
            extra="[auth.http]\nacl_url = \"http://127.0.0.1:$SERVICE_PORT/acl\"\ncache_ttl_secs = 600\n" ;;
    esac
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n%s\n[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "memory"\n%b' \
        "$port" "$acl" "$extra" > "$dir/s.toml"
    RUST_LOG=warn taskset -c 0 $RT "$BIN/starling" serve --config "$dir/s.toml" \
        --data-dir "$dir/data" 2>"$dir/log" &
    pid=$!
    wait_port $port
    taskset -c 1 $RT "$BIN/starling-bench" --port $port --scenario "$scenario" \
        --broker-pid $pid --label "$label" --warmup 3 --duration 10 "${creds[@]}" || true
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
}
for round in $(seq "$ROUNDS"); do
    for scenario in p2p-qos0 p2p-qos1 fan-in fan-out-qos1; do
        for label in starling starling-acl starling-jwt starling-http; do
            run "$label" "$scenario"
        done
    done
done
# How many questions reached the HTTP service over all the `starling-http` runs (the rest
# were answered from the cache).
echo "{\"http_service_requests\": $(cat "$WORK/service-requests" 2>/dev/null || echo 0)}"
