//! A minimal MQTT 3.1.1 client on Starling's codec: connect, subscribe, and a reader that
//! decodes every whole packet of a read. The scenarios drive the sockets themselves.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BytesMut};
use starling_proto::{
    Connect, DecodeError, DecodeLimits, Packet, Properties, ProtocolVersion, QoS, ReasonCode,
    Subscribe, SubscriptionOptions, TopicFilter, decode, encode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Every client of the load generator speaks MQTT 3.1.1, which all three brokers implement
/// fully.
pub(crate) const VERSION: ProtocolVersion = ProtocolVersion::V311;

/// Nanoseconds on a monotonic clock shared by every task of this process (publishers stamp
/// payloads with it, subscribers subtract).
pub(crate) fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Reads from a socket and decodes whole packets off the front of its buffer.
#[derive(Debug)]
pub(crate) struct PacketReader<R> {
    rd: R,
    buf: BytesMut,
    chunk: usize,
    limits: DecodeLimits,
    version: ProtocolVersion,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub(crate) fn new(rd: R, chunk: usize) -> Self {
        Self {
            rd,
            buf: BytesMut::new(),
            chunk,
            limits: DecodeLimits::default(),
            version: VERSION,
        }
    }

    /// The same for a client of another protocol version.
    pub(crate) fn with_version(rd: R, chunk: usize, version: ProtocolVersion) -> Self {
        Self {
            version,
            ..Self::new(rd, chunk)
        }
    }

    /// The socket, dropping whatever was buffered.
    pub(crate) fn into_inner(self) -> R {
        self.rd
    }

    /// Reads once; false at end of stream.
    pub(crate) async fn fill(&mut self) -> Result<bool> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        let n = self.rd.read_buf(&mut self.buf).await.context("read")?;
        Ok(n > 0)
    }

    /// The next whole packet already read, if any.
    pub(crate) fn decode(&mut self) -> Result<Option<Packet>> {
        self.decode_raw().map_err(|e| anyhow!("decode: {e}"))
    }

    /// The same without converting the result: hot loops match on it in place, since a
    /// `Packet` is a few hundred bytes and every move of it is a copy.
    pub(crate) fn decode_raw(&mut self) -> Result<Option<Packet>, DecodeError> {
        decode(&mut self.buf, self.version, &self.limits)
    }

    /// The next whole packet already read, looked at in place: a PUBLISH's QoS, packet
    /// identifier and the first 12 bytes of its payload (the stamp), or only that it was
    /// something else. Nothing is copied or validated beyond the lengths: subscribers of a
    /// throughput run read millions of these a second, and the generator must not be what
    /// limits the broker.
    pub(crate) fn skim(&mut self) -> Result<Option<Skimmed>> {
        let Some((header, fixed, total)) = frame(&self.buf)? else {
            return Ok(None);
        };
        let skimmed = match self.buf.get(fixed..total) {
            Some(body) if header >> 4 == 3 => skim_publish(header, body, self.version)?,
            _ => Skimmed::Other,
        };
        self.buf.advance(total);
        Ok(Some(skimmed))
    }

    /// Reads until a packet arrives; errors at end of stream.
    pub(crate) async fn next(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.decode()? {
                return Ok(p);
            }
            if !self.fill().await? {
                bail!("connection closed by the broker");
            }
        }
    }
}

/// What [`PacketReader::skim`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skimmed {
    /// A PUBLISH: its QoS, packet identifier (0 at QoS 0) and stamp (see `load::stamp`).
    Publish {
        qos: QoS,
        packet_id: u16,
        stamp: (u64, usize),
    },
    /// Any other packet.
    Other,
}

/// The first byte, the fixed header's length and the whole length of the packet at the
/// front of `buf`, if it is all there.
fn frame(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let rest = buf.get(1..).unwrap_or_default();
    let Some((len, used)) = var_int(rest)? else {
        return Ok(None);
    };
    let total = 1 + used + len;
    Ok((buf.len() >= total).then_some((header, 1 + used, total)))
}

/// A PUBLISH's variable header and payload (`body`), read in place.
fn skim_publish(header: u8, body: &[u8], version: ProtocolVersion) -> Result<Skimmed> {
    let short = || anyhow!("decode: PUBLISH shorter than its header");
    let qos = match (header >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => bail!("decode: PUBLISH with QoS 3"),
    };
    let two = |at: usize| -> Result<u16> {
        let b = body.get(at..at + 2).and_then(|b| b.try_into().ok());
        Ok(u16::from_be_bytes(b.ok_or_else(short)?))
    };
    let mut at = 2 + usize::from(two(0)?);
    let mut packet_id = 0;
    if qos != QoS::AtMostOnce {
        packet_id = two(at)?;
        at += 2;
    }
    if version == ProtocolVersion::V5 {
        let (props, used) = var_int(body.get(at..).unwrap_or_default())?.ok_or_else(short)?;
        at += used + props;
    }
    let payload = body.get(at..).ok_or_else(short)?;
    Ok(Skimmed::Publish {
        qos,
        packet_id,
        stamp: crate::load::stamp(payload),
    })
}

/// A variable byte integer at the front of `buf`: its value and its length in bytes (`None`:
/// not all there yet).
fn var_int(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut v = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        v |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    bail!("decode: variable byte integer longer than four bytes")
}

/// The User Name and Password every client of a run sends (`--username`, `--password`: a
/// token, for the authentication benchmarks); set once before the first connection.
pub(crate) static CREDENTIALS: OnceLock<(Option<String>, Option<bytes::Bytes>)> = OnceLock::new();

/// A connected client: the decoding read half and the write half.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) rd: PacketReader<OwnedReadHalf>,
    pub(crate) wr: OwnedWriteHalf,
}

impl Client {
    /// Opens a TCP connection, sends CONNECT (clean session) and waits for a successful
    /// CONNACK. `chunk` is the read size of the returned reader.
    pub(crate) async fn connect(
        addr: &str,
        client_id: String,
        keep_alive: u16,
        chunk: usize,
    ) -> Result<Self> {
        Self::connect_with(addr, client_id, keep_alive, chunk, true).await
    }

    /// Like [`Client::connect`], with the clean session flag given.
    pub(crate) async fn connect_with(
        addr: &str,
        client_id: String,
        keep_alive: u16,
        chunk: usize,
        clean: bool,
    ) -> Result<Self> {
        Self::connect_from(addr, None, client_id, keep_alive, chunk, clean).await
    }

    /// Like [`Client::connect_with`], from the source address `source` when given (any free
    /// port of it): several 127.0.0.x sources give more ports than one.
    pub(crate) async fn connect_from(
        addr: &str,
        source: Option<IpAddr>,
        client_id: String,
        keep_alive: u16,
        chunk: usize,
        clean: bool,
    ) -> Result<Self> {
        let stream = match source {
            None => TcpStream::connect(addr).await,
            Some(ip) => connect_bound(addr, ip).await,
        }
        .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (rd, mut wr) = stream.into_split();
        let out = connect_packet(VERSION, client_id, clean, keep_alive)?;
        wr.write_all(&out).await.context("send CONNECT")?;
        let mut rd = PacketReader::new(rd, chunk);
        match rd.next().await? {
            Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => Ok(Self { rd, wr }),
            Packet::ConnAck(ack) => bail!("CONNACK refused: {:?}", ack.reason),
            other => bail!("expected CONNACK, got {:?}", other.packet_type()),
        }
    }

    /// Sends SUBSCRIBE for `filter` and waits for its SUBACK, which must grant a QoS.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        self.send_subscribe(filter, qos).await?;
        match self.rd.next().await? {
            Packet::SubAck(ack) => check_suback(&ack.reasons),
            other => bail!("expected SUBACK, got {:?}", other.packet_type()),
        }
    }

    /// Sends SUBSCRIBE for `filter` (packet id 1) without waiting.
    pub(crate) async fn send_subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        let mut out = BytesMut::new();
        encode(&subscribe_packet(filter, qos)?, VERSION, &mut out)?;
        self.wr.write_all(&out).await.context("send SUBSCRIBE")
    }
}

/// A SUBSCRIBE (packet id 1) for one filter at `qos`.
pub(crate) fn subscribe_packet(filter: &str, qos: QoS) -> Result<Packet> {
    subscribe_many_packet(1, &[filter], qos)
}

/// A SUBSCRIBE with packet id `packet_id` for every filter of `filters` at `qos`.
pub(crate) fn subscribe_many_packet<S: AsRef<str>>(
    packet_id: u16,
    filters: &[S],
    qos: QoS,
) -> Result<Packet> {
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    let filters = filters
        .iter()
        .map(|f| {
            let f = f.as_ref();
            TopicFilter::try_from_str(f)
                .map(|t| (t, options))
                .map_err(|e| anyhow!("{f}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Packet::Subscribe(Subscribe {
        packet_id,
        filters,
        properties: Properties::default(),
    }))
}

/// A TCP connection to `addr` from `source` (port chosen by the kernel).
async fn connect_bound(addr: &str, source: IpAddr) -> std::io::Result<TcpStream> {
    let to = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address of {source}'s family")))?;
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// Errors unless every code grants a QoS.
pub(crate) fn check_suback(reasons: &[ReasonCode]) -> Result<()> {
    match reasons.iter().find(|r| r.is_error()) {
        Some(r) => bail!("SUBACK refused: {r:?}"),
        None => Ok(()),
    }
}

/// A CONNECT of `client_id` in `version`, with the run's credentials, encoded.
pub(crate) fn connect_packet(
    version: ProtocolVersion,
    client_id: String,
    clean: bool,
    keep_alive: u16,
) -> Result<BytesMut> {
    connect_packet_expiring(version, client_id, clean, keep_alive, None)
}

/// As [`connect_packet`], with a v5 Session Expiry Interval (seconds) if given.
pub(crate) fn connect_packet_expiring(
    version: ProtocolVersion,
    client_id: String,
    clean: bool,
    keep_alive: u16,
    expiry: Option<u32>,
) -> Result<BytesMut> {
    let (username, password) = CREDENTIALS.get().cloned().unwrap_or_default();
    let mut properties = Properties::default();
    if let Some(e) = expiry {
        properties.session_expiry_interval = Some(e);
    }
    let connect = Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: clean,
        keep_alive,
        client_id,
        will: None,
        username,
        password,
        properties,
        bridge: false,
    }));
    let mut out = BytesMut::new();
    encode(&connect, version, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use starling_proto::{PubAck, Publish, TopicName};

    use super::*;

    /// A payload stamped as the publishers stamp theirs, padded to `len`.
    fn stamped(ts: u64, index: u32, len: usize) -> Bytes {
        let mut p = ts.to_be_bytes().to_vec();
        p.extend_from_slice(&index.to_be_bytes());
        p.resize(len.max(12), 7);
        Bytes::from(p)
    }

    /// The skim of a stream of packets sees what the codec decodes, packet by packet, and
    /// nothing of a packet that has not all arrived.
    #[test]
    fn skim_reads_what_the_codec_decodes() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let topic = TopicName::try_from_str("bench/fan/0").unwrap();
            let mut v5 = Publish::new(topic.clone(), QoS::AtLeastOnce, 9, stamped(5, 2, 40));
            if version == ProtocolVersion::V5 {
                v5.properties.message_expiry_interval = Some(60);
                v5.properties.user_properties = vec![("k".into(), "v".into())];
            }
            let packets = [
                Packet::Publish(Publish::new(
                    topic.clone(),
                    QoS::AtMostOnce,
                    0,
                    stamped(1, 0, 12),
                )),
                Packet::PubAck(PubAck::new(3)),
                Packet::Publish(v5),
                // A remaining length of three bytes.
                Packet::Publish(Publish::new(
                    topic,
                    QoS::ExactlyOnce,
                    65535,
                    stamped(u64::MAX, 99, 20_000),
                )),
            ];
            let mut wire = BytesMut::new();
            for p in &packets {
                encode(p, version, &mut wire).unwrap();
            }
            let mut r = PacketReader::with_version(&b""[..], 1024, version);
            let mut seen = Vec::new();
            // Byte by byte: every prefix short of a whole packet skims as nothing.
            for b in wire.iter() {
                r.buf.extend_from_slice(&[*b]);
                while let Some(s) = r.skim().unwrap() {
                    seen.push(s);
                }
            }
            assert!(r.buf.is_empty());
            let expected: Vec<Skimmed> = packets
                .iter()
                .map(|p| match p {
                    Packet::Publish(p) => Skimmed::Publish {
                        qos: p.qos,
                        packet_id: p.packet_id,
                        stamp: crate::load::stamp(&p.payload),
                    },
                    _ => Skimmed::Other,
                })
                .collect();
            assert_eq!(seen, expected, "{version:?}");
            assert_eq!(
                seen.get(3),
                Some(&Skimmed::Publish {
                    qos: QoS::ExactlyOnce,
                    packet_id: 65535,
                    stamp: (u64::MAX, 99)
                })
            );
        }
    }

    /// A remaining length of five bytes, or a PUBLISH shorter than its topic, is an error.
    #[test]
    fn skim_refuses_what_is_malformed() {
        let mut r = PacketReader::new(&b""[..], 1024);
        r.buf
            .extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(r.skim().is_err());
        let mut r = PacketReader::new(&b""[..], 1024);
        r.buf.extend_from_slice(&[0x30, 0x03, 0x00, 0x09, b'a']);
        assert!(r.skim().is_err());
    }
}
