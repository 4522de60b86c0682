# Broker configs shared by bench/compare.sh, bench/scale.sh, bench/ab.sh and
# bench/latency.sh, and installing the peers (sourced, defines functions only).

# starling_toml: Starling's config for the clean scenarios on stdout: no persistence (like the
# peers; bench/durability.sh measures the durable modes), queues and windows large enough
# that nothing is dropped at QoS 1, packets up to 4 MiB.
starling_toml() {
    cat <<EOF
log_level = "warn"

[limits]
max_packet_size = 4194304
max_queued_messages = 1000000
max_queued_bytes = 4294967296
max_inflight = 1000
max_connections = 100000

[storage]
durability = "memory"
EOF
}

# rumqttd_toml PORT MAX_CONNECTIONS OUTGOING: rumqttd's config on stdout. 127.0.0.1 only,
# 1,000 outbound messages in flight, packets up to 4 MiB. OUTGOING is
# max_outgoing_packet_count: rumqttd sends a QoS 0 subscriber at most that many messages per
# read of its log, and truncates the retained messages sent on SUBSCRIBE to it.
rumqttd_toml() {
    cat <<EOF
id = 0

[router]
id = 0
max_connections = $2
max_outgoing_packet_count = $3
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$1"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 4194304
    max_inflight_count = 1000
    dynamic_filters = true
EOF
}

# mosquitto_conf PORT: mosquitto's config for the clean scenarios on stdout, the equivalent of
# starling_toml: 127.0.0.1, no persistence, anonymous, 1,000 outbound QoS 1 messages in
# flight, queues of 1,000,000 messages, packets up to 4 MiB, no connection limit.
mosquitto_conf() {
    cat <<EOF
listener $1 127.0.0.1
allow_anonymous true
persistence false
log_dest none
max_inflight_messages 1000
max_queued_messages 1000000
max_queued_bytes 0
max_packet_size 4194304
max_connections -1
EOF
}

# install_peers LIST TOOLS VERSION: installs mosquitto (Debian package) and rumqttd VERSION
# (into TOOLS, without TLS and WebSocket) if LIST (comma-separated) names them and they are
# missing; sets MOSQUITTO to mosquitto's path. Expects a `log` function.
install_peers() {
    if [[ ",$1," == *",mosquitto,"* ]] && ! command -v mosquitto >/dev/null 2>&1 \
        && [ ! -x /usr/sbin/mosquitto ]; then
        log "installing mosquitto"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto
    fi
    MOSQUITTO=$(command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto)
    if [[ ",$1," == *",rumqttd,"* ]] && [ ! -x "$2/bin/rumqttd" ]; then
        log "installing rumqttd $3"
        cargo install rumqttd --version "$3" --no-default-features --root "$2"
    fi
}
