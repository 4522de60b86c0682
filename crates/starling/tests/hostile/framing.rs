//! Framing and the first packets: remaining length, oversized CONNECT, first packet not CONNECT, second CONNECT, silent connections.

use super::*;

/// Remaining length with a fifth byte (four continuation bytes): malformed. Before CONNECT the
/// socket is closed without a word; after a v5 CONNECT the broker sends DISCONNECT 0x81 first;
/// after a 3.1.1 CONNECT it just closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_length_of_five_bytes_closes() {
    let (server, mut probe) = setup(|_| {}).await;
    let bad = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];

    let mut c = RawClient::open(server.addr).await;
    let _ = c.send_raw(&bad).await;
    c.expect_closed_silently().await;

    let (mut c, _) = RawClient::connect(server.addr, V5, "varint-v5").await;
    let _ = c.send_raw(&bad).await;
    c.expect_disconnect(ReasonCode::MalformedPacket).await;

    let (mut c, _) = RawClient::connect(server.addr, V311, "varint-v311").await;
    let _ = c.send_raw(&bad).await;
    c.expect_closed_silently().await;

    assert!(server.broker().metrics.protocol_errors.get() >= 3);
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 2 -------------------------------------------------------------------------------------------

/// A CONNECT fixed header declaring more than `max_connect_packet_size` is refused from the
/// header alone: the socket closes at once, long before the CONNECT timeout, with no body sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_connect_header_closes_immediately() {
    let (server, mut probe) = setup(|l| l.connect_timeout_secs = 30).await;
    let max = server.broker().limits.max_connect_packet_size;

    for declared in [max, max + 1_000, 200_000_000] {
        let mut header = vec![0x10];
        header.extend(varint(declared));
        let mut c = RawClient::open(server.addr).await;
        let started = Instant::now();
        c.send_raw(&header).await.unwrap();
        let got = c.expect_closed(Duration::from_secs(2)).await;
        assert!(got.is_empty(), "no CONNACK expected, got {got:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 3 -------------------------------------------------------------------------------------------

/// A first packet other than CONNECT (MQTT-3.1.0-1): closed, nothing sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect_closes_silently() {
    let (server, mut probe) = setup(|_| {}).await;
    let pingreq = vec![0xC0, 0x00];
    let publish = raw_publish(V311, b"a/b", b"hi");
    let subscribe = raw_subscribe(V311, 1, b"a/#");
    let disconnect = vec![0xE0, 0x00];
    for bytes in [pingreq, publish, subscribe, disconnect] {
        let mut c = RawClient::open(server.addr).await;
        let _ = c.send_raw(&bytes).await;
        c.expect_closed_silently().await;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 4 -------------------------------------------------------------------------------------------

/// A second CONNECT on a connection (MQTT-3.1.0-2): 3.1.1 closes; v5 DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_is_a_protocol_error() {
    let (server, mut probe) = setup(|_| {}).await;

    let (mut c, _) = RawClient::connect(server.addr, V311, "twice-v311").await;
    c.send(&Packet::Connect(Box::new(connect_packet(
        V311,
        "twice-v311",
    ))))
    .await;
    c.expect_closed_silently().await;

    let (mut c, _) = RawClient::connect(server.addr, V5, "twice-v5").await;
    c.send(&Packet::Connect(Box::new(connect_packet(V5, "twice-v5"))))
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;

    // A second CONNECT of another level (v5 connection, 3.1.1 CONNECT) is just as wrong.
    let (mut c, _) = RawClient::connect(server.addr, V5, "twice-mixed").await;
    c.send(&Packet::Connect(Box::new(connect_packet(V311, "other"))))
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;

    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 5 -------------------------------------------------------------------------------------------

/// A TCP connection that never sends CONNECT is closed after `connect_timeout_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_times_out() {
    let (server, mut probe) = setup(|l| l.connect_timeout_secs = 1).await;
    let started = Instant::now();
    let mut silent = RawClient::open(server.addr).await;
    let mut crowd = Vec::new();
    for _ in 0..50 {
        crowd.push(RawClient::open(server.addr).await);
    }
    // And one that sends half a CONNECT and stops.
    let mut half = RawClient::open(server.addr).await;
    half.send_raw(&[0x10, 0x20, 0x00, 0x04, b'M'])
        .await
        .unwrap();

    let got = silent.expect_closed(Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{got:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    let got = half.expect_closed(Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{got:?}");
    for c in &mut crowd {
        let got = c.expect_closed(Duration::from_secs(3)).await;
        assert!(got.is_empty(), "{got:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // The probe connected before is not subject to the CONNECT timeout.
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}
