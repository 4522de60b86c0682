# Peer broker configs shared by bench/compare.sh and bench/scale.sh (sourced, defines
# functions only).

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
