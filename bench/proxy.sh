#!/usr/bin/env bash
# What the PROXY protocol costs: p2p QoS 1 (and QoS 0) through HAProxy in TCP mode sending a
# v2 header (`send-proxy-v2`, the listener with `proxy_protocol = "v2"`), through the same
# HAProxy without a header, and straight to the broker, in the same run. The broker on core 0
# as in bench/compare.sh, the load generator and HAProxy (one thread) on core 1, memory
# durability. Prints one JSON line per run; bench/RESULTS.md quotes them.
#
#   bench/proxy.sh [--rounds N]
#
# The header is read once per connection, so what this measures is the proxy hop; the
# variants' order rotates each round so that drift on the machine does not favour one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh proxy "$@"
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
port=25000
run() { # label scenario
    local label=$1 scenario=$2 dir pid hpid="" target proxy=""
    port=$((port + 3)); dir="$WORK/$label-$port"; mkdir -p "$dir/data"
    target=$port
    case "$label" in
        direct) ;;
        haproxy-plain) target=$((port + 2)) ;;
        haproxy-v2)
            target=$((port + 2))
            proxy=$'proxy_protocol = "v2"\nproxy_protocol_trusted = ["127.0.0.1"]' ;;
    esac
    printf '[[listener]]\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n%s\n[http]\nenabled = false\n[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\nmax_queued_bytes = 4294967296\n[storage]\ndurability = "memory"\n' \
        "$port" "$proxy" > "$dir/s.toml"
    RUST_LOG=warn taskset -c 0 $RT "$BIN/starling" serve --config "$dir/s.toml" \
        --data-dir "$dir/data" 2>"$dir/log" &
    pid=$!
    wait_port $port
    if [ "$label" != direct ]; then
        local send=""
        [ "$label" = haproxy-v2 ] && send="send-proxy-v2"
        printf 'global\n    nbthread 1\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\nfrontend f\n    bind 127.0.0.1:%s\n    default_backend b\nbackend b\n    server s 127.0.0.1:%s %s\n' \
            "$target" "$port" "$send" > "$dir/haproxy.cfg"
        taskset -c 1 "$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
        hpid=$!
        wait_port $target
    fi
    taskset -c 1 $RT "$BIN/starling-bench" --port $target --scenario "$scenario" \
        --broker-pid $pid --label "$label" --warmup 3 --duration 10 || true
    [ -n "$hpid" ] && { kill $hpid 2>/dev/null; wait $hpid 2>/dev/null || true; }
    kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
}
labels=(direct haproxy-plain haproxy-v2)
for round in $(seq "$ROUNDS"); do
    for scenario in p2p-qos1 p2p-qos0; do
        for i in 0 1 2; do
            run "${labels[$(( (i + round) % 3 ))]}" "$scenario"
        done
    done
done
