#!/usr/bin/env bash
# Messages per second through a bridge: a publisher on the local broker, a bridge (topic
# bench/# out) to a remote mosquitto, a subscriber on the remote. Starling bridging (memory
# durability, as mosquitto without persistence) beside mosquitto bridging the same way, to the
# same remote, same clients (`starling pub -l` and `starling sub`, release build), at QoS 0 and
# 1, in alternating order. Unpinned: four processes share the machine's cores. Prints one line
# per run; bench/RESULTS.md quotes the medians. The remote takes 100 messages in flight, so
# Starling's bridge, over MQTT 3.1.1 which cannot say so, is told (`max_inflight = 64`).
#
#   bench/bridge.sh [--rounds N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh bridge "$@"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
USER_LINE=""
[ "$(id -u)" = 0 ] && USER_LINE="user root"
REMOTE=25001
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 100\n%s\n' \
    $REMOTE "$USER_LINE" > "$WORK/remote.conf"
"$MOSQUITTO" -c "$WORK/remote.conf" 2>/dev/null &
wait_port $REMOTE
port=25010
start_local() { # kind qos -> pid in LOCAL_PID, port in port
    local kind=$1 qos=$2 dir
    port=$((port + 2)); dir="$WORK/$kind-$port"; mkdir -p "$dir/data"
    if [ "$kind" = starling ]; then
        printf '[[listener]]\nbind = "127.0.0.1:%s"\n[http]\nenabled = false\n[storage]\ndurability = "memory"\n[limits]\nmax_queued_messages = 1000000\nmax_inflight = 100\n[[bridge]]\nname = "b"\naddress = "127.0.0.1:%s"\nprotocol = "mqttv311"\nclient_id = "bench-bridge-%s"\nqueue_max_messages = 1000000\nmax_inflight = 64\n[[bridge.topic]]\npattern = "bench/#"\ndirection = "out"\nqos = %s\n' \
            "$port" $REMOTE "$port" "$qos" > "$dir/s.toml"
        RUST_LOG=warn "$BIN/starling" serve --config "$dir/s.toml" --data-dir "$dir/data" 2>"$dir/log" &
    else
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 100\n%s\nconnection b\naddress 127.0.0.1:%s\nremote_clientid bench-bridge-%s\nbridge_protocol_version mqttv311\ntopic bench/# out %s\n' \
            "$port" "$USER_LINE" $REMOTE "$port" "$qos" > "$dir/m.conf"
        "$MOSQUITTO" -c "$dir/m.conf" 2>/dev/null &
    fi
    LOCAL_PID=$!
    wait_port $port
    sleep 1 # the bridge connects
}
run() { # kind qos count
    local kind=$1 qos=$2 n=$3 t0 t1 got
    start_local "$kind" "$qos"
    "$BIN/starling" sub -p $REMOTE -t "bench/$port" -q "$qos" -C "$n" -W 60 -F '%l' > "$WORK/got" &
    local sub=$!
    sleep 0.5
    t0=$(date +%s.%N)
    seq "$n" | "$BIN/starling" pub -p "$port" -t "bench/$port" -q "$qos" -l
    wait $sub || true
    t1=$(date +%s.%N)
    got=$(wc -l < "$WORK/got")
    kill $LOCAL_PID 2>/dev/null; wait $LOCAL_PID 2>/dev/null || true
    python3 -c "import json;print(json.dumps({'broker':'$kind','qos':$qos,'sent':$n,'received':$got,'seconds':round($t1-$t0,3),'rate_per_s':round($got/($t1-$t0))}))"
}
for round in $(seq "$ROUNDS"); do
    for qos in 0 1; do
        n=$([ "$qos" = 0 ] && echo 200000 || echo 100000)
        if [ $((round % 2)) = 1 ]; then order="starling mosquitto"; else order="mosquitto starling"; fi
        for kind in $order; do run "$kind" "$qos" "$n"; done
    done
done
