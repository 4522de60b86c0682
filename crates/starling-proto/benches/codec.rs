//! Codec micro-benchmarks: decode and encode of a QoS 0 and a QoS 1 PUBLISH with a 64-byte
//! payload, and of a CONNECT, at MQTT 3.1.1 and 5.0. Results go in bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use divan::{Bencher, black_box};
use starling_proto::*;

fn main() {
    divan::main();
}

fn publish(qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::try_from_str("sensors/building-7/room-12/temperature").unwrap(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 42 },
        properties: Properties::default(),
        payload: Bytes::from(vec![0xA5; 64]),
    })
}

fn connect(protocol: ProtocolVersion) -> Packet {
    let mut properties = Properties::default();
    if protocol.is_v5() {
        properties.session_expiry_interval = Some(3600);
        properties.receive_maximum = Some(100);
        properties.topic_alias_maximum = Some(16);
    }
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "bench-client-000001".into(),
        will: None,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret")),
        properties,
        bridge: false,
    }))
}

fn encoded(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap();
    buf.freeze()
}

fn bench_decode(bencher: Bencher<'_, '_>, packet: Packet, version: ProtocolVersion) {
    let bytes = encoded(&packet, version);
    let limits = DecodeLimits::default();
    // A read buffer in steady state: already shared (a packet was split off it before), so
    // splitting this packet off does not allocate, as for every packet after a connection's
    // first in one buffer.
    bencher
        .with_inputs(|| {
            let mut buf = BytesMut::with_capacity(2 * bytes.len());
            buf.extend_from_slice(&bytes);
            buf.extend_from_slice(&bytes);
            drop(buf.split_to(bytes.len()));
            buf
        })
        .bench_local_refs(|buf| decode(buf, black_box(version), &limits).unwrap());
}

fn bench_encode(bencher: Bencher<'_, '_>, packet: Packet, version: ProtocolVersion) {
    bencher
        .with_inputs(|| BytesMut::with_capacity(256))
        .bench_local_refs(|buf| encode(black_box(&packet), black_box(version), buf).unwrap());
}

mod decode {
    use super::*;

    #[divan::bench]
    fn publish_qos0_v311(b: Bencher<'_, '_>) {
        bench_decode(b, publish(QoS::AtMostOnce), ProtocolVersion::V311);
    }

    #[divan::bench]
    fn publish_qos0_v5(b: Bencher<'_, '_>) {
        bench_decode(b, publish(QoS::AtMostOnce), ProtocolVersion::V5);
    }

    #[divan::bench]
    fn publish_qos1_v311(b: Bencher<'_, '_>) {
        bench_decode(b, publish(QoS::AtLeastOnce), ProtocolVersion::V311);
    }

    #[divan::bench]
    fn publish_qos1_v5(b: Bencher<'_, '_>) {
        bench_decode(b, publish(QoS::AtLeastOnce), ProtocolVersion::V5);
    }

    #[divan::bench]
    fn connect_v311(b: Bencher<'_, '_>) {
        bench_decode(b, connect(ProtocolVersion::V311), ProtocolVersion::V311);
    }

    #[divan::bench]
    fn connect_v5(b: Bencher<'_, '_>) {
        bench_decode(b, connect(ProtocolVersion::V5), ProtocolVersion::V5);
    }
}

mod encode {
    use super::*;

    #[divan::bench]
    fn publish_qos0_v311(b: Bencher<'_, '_>) {
        bench_encode(b, publish(QoS::AtMostOnce), ProtocolVersion::V311);
    }

    #[divan::bench]
    fn publish_qos0_v5(b: Bencher<'_, '_>) {
        bench_encode(b, publish(QoS::AtMostOnce), ProtocolVersion::V5);
    }

    #[divan::bench]
    fn publish_qos1_v311(b: Bencher<'_, '_>) {
        bench_encode(b, publish(QoS::AtLeastOnce), ProtocolVersion::V311);
    }

    #[divan::bench]
    fn publish_qos1_v5(b: Bencher<'_, '_>) {
        bench_encode(b, publish(QoS::AtLeastOnce), ProtocolVersion::V5);
    }

    #[divan::bench]
    fn connect_v311(b: Bencher<'_, '_>) {
        bench_encode(b, connect(ProtocolVersion::V311), ProtocolVersion::V311);
    }

    #[divan::bench]
    fn connect_v5(b: Bencher<'_, '_>) {
        bench_encode(b, connect(ProtocolVersion::V5), ProtocolVersion::V5);
    }

    /// The fan-out path: the header alone, the payload is sent as its own `Bytes`.
    #[divan::bench]
    fn publish_header_qos1_v5(b: Bencher<'_, '_>) {
        let Packet::Publish(p) = publish(QoS::AtLeastOnce) else {
            unreachable!()
        };
        b.with_inputs(|| BytesMut::with_capacity(256))
            .bench_local_refs(|buf| {
                encode_publish_header(black_box(&p), ProtocolVersion::V5, buf).unwrap()
            });
    }
}

/// Decoding a read buffer that holds 100 packets back to back, as a busy connection's buffer
/// does; throughput is reported per packet.
mod decode_stream {
    use super::*;
    use divan::counter::ItemsCount;

    const PACKETS: usize = 100;

    fn bench_stream(bencher: Bencher<'_, '_>, packet: Packet, version: ProtocolVersion) {
        let one = encoded(&packet, version);
        let stream: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * PACKETS)
            .collect();
        let limits = DecodeLimits::default();
        bencher
            .counter(ItemsCount::new(PACKETS))
            .with_inputs(|| BytesMut::from(&stream[..]))
            .bench_local_refs(|buf| {
                let mut n = 0;
                while let Some(p) = decode(buf, version, &limits).unwrap() {
                    black_box(p);
                    n += 1;
                }
                assert_eq!(n, PACKETS);
            });
    }

    #[divan::bench]
    fn publish_qos0_v311_x100(b: Bencher<'_, '_>) {
        bench_stream(b, publish(QoS::AtMostOnce), ProtocolVersion::V311);
    }

    #[divan::bench]
    fn publish_qos1_v5_x100(b: Bencher<'_, '_>) {
        bench_stream(b, publish(QoS::AtLeastOnce), ProtocolVersion::V5);
    }
}
