//! Connection rate limit and bans per address.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_loop_gets_the_address_banned() {
    let mut config = config_with(vec![listener("tcp")]);
    config.security.exempt_loopback = false;
    config.security.max_connection_rate = 0;
    config.security.flapping_max_connects = 3;
    config.security.ban_secs = 60;
    let s = start_server_with(&config).await;
    for i in 0..3 {
        ok_client(s.addr, connect_packet(V5, &format!("c{i}"))).await;
    }
    let mut c = RawClient::open(s.addr).await;
    let _ = c
        .send_raw(&encode(
            &[Packet::Connect(Box::new(connect_packet(V5, "x")))],
            V5,
        ))
        .await;
    c.expect_closed_silently().await;
    let m = &s.broker().metrics;
    assert_eq!(m.addresses_banned.get(), 1);
    assert_eq!(m.connections_banned.get(), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_limit_per_address() {
    let mut config = config_with(vec![listener("tcp")]);
    config.security.exempt_loopback = false;
    config.security.max_connection_rate = 2;
    config.security.flapping_max_connects = 0;
    let s = start_server_with(&config).await;
    ok_client(s.addr, connect_packet(V5, "a")).await;
    ok_client(s.addr, connect_packet(V5, "b")).await;
    let mut c = RawClient::open(s.addr).await;
    let _ = c
        .send_raw(&encode(
            &[Packet::Connect(Box::new(connect_packet(V5, "c")))],
            V5,
        ))
        .await;
    c.expect_closed_silently().await;
    assert_eq!(s.broker().metrics.connections_rate_limited.get(), 1);
    // Tokens come back: one per half second here.
    tokio::time::sleep(Duration::from_millis(600)).await;
    ok_client(s.addr, connect_packet(V5, "d")).await;
    s.shutdown().await;
}
