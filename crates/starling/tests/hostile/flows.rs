//! Flow control and QoS abuse: Receive Maximum, packet id reuse, a slow consumer, oversized packets.

use super::*;

/// More unacknowledged QoS 2 PUBLISHes than the Receive Maximum advertised in CONNACK:
/// DISCONNECT 0x93 (MQTT-3.3.4-7, -8) after a PUBREC for each one within the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_exceeded() {
    let (server, mut probe) = setup(|_| {}).await;
    let (mut c, ack) = RawClient::connect(server.addr, V5, "greedy").await;
    let rm = ack
        .properties
        .receive_maximum
        .expect("CONNACK advertises Receive Maximum");
    let packets: Vec<Packet> = (1..=rm + 1)
        .map(|pid| qos2_publish(pid, false, "greedy/t", b"x"))
        .collect();
    c.send_all(&packets).await;
    let got = c.expect_closed(WAIT).await;
    let (last, recs) = got.split_last().expect("some packets");
    assert_eq!(
        recs.len(),
        usize::from(rm),
        "one PUBREC per accepted PUBLISH"
    );
    for (i, p) in recs.iter().enumerate() {
        match p {
            Packet::PubRec(a) => {
                assert_eq!(usize::from(a.packet_id), i + 1);
                assert!(!a.reason.is_error(), "{a:?}");
            }
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    match last {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::ReceiveMaximumExceeded),
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
    assert_eq!(server.broker().metrics.receive_maximum_exceeded.get(), 1);
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 13 ------------------------------------------------------------------------------------------

/// A QoS 2 packet id reused before PUBREL: answered with PUBREC again, and the message is not
/// delivered a second time (MQTT-4.3.3-10); PUBREL then gets PUBCOMP; after that the id is free
/// and a new message with it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_packet_id_reuse_before_pubrel() {
    let (server, mut probe) = setup(|_| {}).await;
    for (version, dup) in [(V5, false), (V5, true), (V311, false), (V311, true)] {
        let tag = format!("{}-{dup}", version.level());
        let topic = format!("qos2/{tag}");
        let (mut sub, _) = RawClient::connect(server.addr, V5, &format!("q2sub-{tag}")).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        let (mut publ, _) = RawClient::connect(server.addr, version, &format!("q2pub-{tag}")).await;

        let expect_pubrec = |p: Packet| match p {
            Packet::PubRec(a) => {
                assert_eq!(a.packet_id, 7);
                assert!(!a.reason.is_error(), "{a:?}");
            }
            other => panic!("expected PUBREC 7, got {other:?}"),
        };
        let expect_delivery =
            async |sub: &mut RawClient, payload: &[u8]| match sub.expect_packet(WAIT).await {
                Packet::Publish(p) => {
                    assert_eq!(&p.payload[..], payload);
                    sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            };

        publ.send(&qos2_publish(7, false, &topic, b"one")).await;
        expect_pubrec(publ.expect_packet(WAIT).await);
        expect_delivery(&mut sub, b"one").await;

        publ.send(&qos2_publish(7, dup, &topic, b"two")).await;
        expect_pubrec(publ.expect_packet(WAIT).await);
        sub.expect_silence(Duration::from_millis(300)).await;

        publ.send(&Packet::PubRel(PubAck::new(7))).await;
        match publ.expect_packet(WAIT).await {
            Packet::PubComp(a) => {
                assert_eq!(a.packet_id, 7);
                assert_eq!(a.reason, ReasonCode::Success);
            }
            other => panic!("expected PUBCOMP 7, got {other:?}"),
        }
        sub.expect_silence(Duration::from_millis(100)).await;

        publ.send(&qos2_publish(7, false, &topic, b"three")).await;
        expect_pubrec(publ.expect_packet(WAIT).await);
        expect_delivery(&mut sub, b"three").await;
        publ.send(&Packet::PubRel(PubAck::new(7))).await;
        assert!(matches!(
            publ.expect_packet(WAIT).await,
            Packet::PubComp(PubAck { packet_id: 7, .. })
        ));
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 14 ------------------------------------------------------------------------------------------

const FLOOD: usize = 20_000;
const FLOOD_PAYLOAD: usize = 1024;

/// A slow consumer (QoS 1 subscription, never reads its socket) while a publisher floods 20,000
/// QoS 1 messages of 1 KiB: the publisher never stalls (every PUBACK arrives in bounded time),
/// a second subscriber that reads keeps receiving, the slow session's queue stays bounded
/// (drops counted in `dropped_queue_full`) and the process's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_stall_the_broker() {
    let (server, mut probe) = setup(|l| {
        l.max_queued_messages = 100;
        l.max_queued_bytes = 1024 * 1024;
    })
    .await;
    let addr = server.addr;
    let topic = "flood/t";
    let rss_before = vm_rss_bytes().expect("VmRSS readable");

    let (mut slow, _) = RawClient::connect(addr, V5, "flood-slow").await;
    slow.subscribe(topic, QoS::AtLeastOnce).await;
    let (mut reader, _) = RawClient::connect(addr, V5, "flood-reader").await;
    reader.subscribe(topic, QoS::AtLeastOnce).await;
    let (mut publ, ack) = RawClient::connect(addr, V5, "flood-pub").await;
    let window = usize::from(ack.properties.receive_maximum.unwrap_or(u16::MAX)).min(100);

    let reader_task = tokio::spawn(async move {
        let mut got = 0usize;
        let mut last_seq = u32::MAX;
        let mut acks = BytesMut::new();
        loop {
            let first = match reader.recv(Duration::from_secs(5)).await {
                Recv::Packet(p) => p,
                Recv::Timeout => break,
                Recv::Closed => panic!("reader disconnected after {got} messages"),
            };
            let mut next = Some(first);
            while let Some(p) = next {
                match p {
                    Packet::Publish(p) => {
                        assert_eq!(p.payload.len(), FLOOD_PAYLOAD);
                        got += 1;
                        last_seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                        starling_proto::encode(
                            &Packet::PubAck(PubAck::new(p.packet_id)),
                            V5,
                            &mut acks,
                        )
                        .unwrap();
                    }
                    other => panic!("reader: unexpected {other:?}"),
                }
                next = reader.try_decode();
            }
            reader.send_raw(&acks).await.unwrap();
            acks.clear();
            // Queues drop the oldest, so the last message published always comes last.
            if last_seq as usize == FLOOD - 1 {
                break;
            }
        }
        (got, last_seq)
    });

    let started = Instant::now();
    let mut payload = vec![0x5A; FLOOD_PAYLOAD];
    let mut sent = 0usize;
    let mut acked = 0usize;
    let mut out = BytesMut::new();
    let mut next_id = 0u16;
    while acked < FLOOD {
        while sent < FLOOD && sent - acked < window {
            next_id = next_id.checked_add(1).unwrap_or(1);
            payload[..4].copy_from_slice(&(sent as u32).to_be_bytes());
            let p = publish_packet(topic, QoS::AtLeastOnce, next_id, &payload);
            starling_proto::encode(&p, V5, &mut out).unwrap();
            sent += 1;
        }
        if !out.is_empty() {
            publ.send_raw(&out).await.unwrap();
            out.clear();
        }
        match publ.recv(Duration::from_secs(5)).await {
            Recv::Packet(Packet::PubAck(a)) => {
                assert!(!a.reason.is_error(), "{a:?}");
                acked += 1;
            }
            other => panic!("publisher stalled after {acked} PUBACKs: {other:?}"),
        }
        while let Some(p) = publ.try_decode() {
            match p {
                Packet::PubAck(_) => acked += 1,
                other => panic!("publisher: unexpected {other:?}"),
            }
        }
    }
    let publish_time = started.elapsed();
    let (received, last_seq) = reader_task.await.unwrap();
    let metrics = &server.broker().metrics;
    let dropped = metrics.dropped_queue_full.get();
    let rss_after = vm_rss_bytes().expect("VmRSS readable");
    let peak = vm_hwm_bytes().expect("VmHWM readable");
    let growth = rss_after.max(peak).saturating_sub(rss_before);
    eprintln!(
        "slow consumer: {FLOOD} published in {publish_time:?}, reader received {received}, \
         dropped_queue_full {dropped}, RSS {} -> {} MiB (peak {} MiB)",
        rss_before >> 20,
        rss_after >> 20,
        peak >> 20
    );
    assert!(
        publish_time < Duration::from_secs(20),
        "publisher took {publish_time:?}"
    );
    assert!(dropped > 0, "the slow session's queue never overflowed");
    // The slow session holds at most its inflight window plus its queue; the rest was dropped.
    let limits = &server.broker().limits;
    let slow_cap = usize::from(limits.max_inflight) + limits.max_queued_messages;
    assert!(
        dropped as usize >= FLOOD - slow_cap,
        "dropped {dropped}, reader received {received}"
    );
    // Queues drop the oldest, so a subscriber that keeps reading gets the newest messages
    // whatever was dropped on the way: it was served to the end.
    assert_eq!(
        last_seq as usize,
        FLOOD - 1,
        "the reading subscriber did not get the last message"
    );
    assert!(
        received >= FLOOD / 4,
        "the reading subscriber got only {received} of {FLOOD}"
    );
    // The peak covers the whole flood, not only its end.
    assert!(
        growth < 100 * 1024 * 1024,
        "RSS grew by up to {} MiB",
        growth >> 20
    );

    // The slow consumer is still connected and, once it reads, gets what was kept for it.
    let mut kept = 0;
    while let Recv::Packet(p) = slow.recv(Duration::from_millis(500)).await {
        match p {
            Packet::Publish(p) => {
                kept += 1;
                slow.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
            }
            other => panic!("slow consumer: unexpected {other:?}"),
        }
    }
    assert!(kept > 0 && kept <= slow_cap, "slow consumer got {kept}");

    drop((slow, publ));
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 15 ------------------------------------------------------------------------------------------

/// A PUBLISH of exactly the advertised Maximum Packet Size is accepted; one byte more gets
/// DISCONNECT 0x95 and the close (spec 3.2.2.3.6, 4.13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_over_max_packet_size() {
    let (server, mut probe) = setup(|l| l.max_packet_size = 4096).await;
    let (mut c, ack) = RawClient::connect(server.addr, V5, "too-big").await;
    let max = ack
        .properties
        .maximum_packet_size
        .expect("CONNACK advertises Maximum Packet Size") as usize;
    assert_eq!(max, 4096);

    let sized = |total: usize, pid: u16| {
        let mut payload_len = total;
        loop {
            let p = publish_packet("big/t", QoS::AtLeastOnce, pid, &vec![b'x'; payload_len]);
            let Packet::Publish(ref publish) = p else {
                unreachable!()
            };
            let len = starling_proto::publish_len(publish, V5).unwrap();
            if len == total {
                return p;
            }
            payload_len -= len - total;
        }
    };
    c.send(&sized(max, 1)).await;
    match c.expect_packet(WAIT).await {
        Packet::PubAck(a) => assert!(!a.reason.is_error(), "{a:?}"),
        other => panic!("a PUBLISH of exactly the maximum was refused: {other:?}"),
    }
    c.send(&sized(max + 1, 2)).await;
    c.expect_disconnect(ReasonCode::PacketTooLarge).await;

    // Only the fixed header of a far larger packet: refused without waiting for the body.
    let (mut c, _) = RawClient::connect(server.addr, V5, "too-big-2").await;
    let mut header = vec![0x32];
    header.extend(varint(100_000_000));
    c.send_raw(&header).await.unwrap();
    c.expect_disconnect(ReasonCode::PacketTooLarge).await;

    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}
