//! The records the store keeps, and their versioned binary encoding. Each record starts with a
//! format byte; a record written by a newer, unknown format is refused rather than misread.
//! Decoding checks every length against the bytes present: a damaged record is an error, never
//! a panic or an oversized allocation.

use crate::StoreError;

/// Format byte of every record this version writes. Format 2 added the reference to a shared
/// payload at the end of a message record; format 1 records are still read.
pub const RECORD_FORMAT: u8 = 2;

/// A subscription of a persistent session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Full filter, `$share/...` included.
    pub filter: String,
    /// Subscription options byte as on the wire (MQTT 5 layout).
    pub options: u8,
    /// Subscription identifier.
    pub id: Option<u32>,
}

/// A will kept with its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WillRecord {
    /// The will message as an MQTT 5 PUBLISH packet (topic, payload, QoS, retain, properties).
    pub packet: Vec<u8>,
    /// Will Delay Interval, seconds.
    pub delay_secs: u32,
}

/// A persistent session (one with a non-zero expiry interval).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Protocol level of its last connection.
    pub protocol: u8,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// When its connection ended (Unix milliseconds); `None` while it was connected.
    pub disconnected_at_ms: Option<u64>,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Pending will.
    pub will: Option<WillRecord>,
}

/// Where an outbound message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessagePhase {
    /// Queued, not sent yet.
    Queued,
    /// PUBLISH sent with `packet_id`, waiting for PUBACK / PUBREC.
    Published,
    /// PUBREL sent for `packet_id`, waiting for PUBCOMP.
    Released,
}

/// A payload that the records of many queues share: a store keeps it once, however many
/// sessions a message was queued for, instead of a copy per session (the writes of a message
/// to offline subscribers would otherwise grow with their number).
#[derive(Clone)]
pub struct SharedPayload {
    /// Names the payload while it is in memory: records put with the same key and length
    /// carry the same bytes. The broker uses the address of the payload's buffer, which is
    /// unique while the message lives; a store may answer a load with keys of its own.
    pub key: u64,
    /// The bytes.
    pub bytes: bytes::Bytes,
}

impl PartialEq for SharedPayload {
    /// Two shared payloads are equal when their bytes are: the key is only a name.
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SharedPayload {}

impl std::fmt::Debug for SharedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedPayload({:#x}, {} bytes)",
            self.key,
            self.bytes.len()
        )
    }
}

/// A message: queued or inflight for a session, or retained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    /// The message as an MQTT 5 PUBLISH packet (for a session: at the QoS and RETAIN it is
    /// delivered with, subscription identifiers included); with `payload`, only its beginning,
    /// the payload's bytes being the rest.
    pub packet: Vec<u8>,
    /// The payload, kept apart to be shared by the records of every queue it is in.
    pub payload: Option<SharedPayload>,
    /// Expiry (Unix milliseconds), if the message has one.
    pub expires_at_ms: Option<u64>,
    /// Phase of the QoS flow.
    pub phase: MessagePhase,
    /// Packet identifier once sent.
    pub packet_id: u16,
}

struct Writer(Vec<u8>);

impl Writer {
    /// A record of about `size` bytes (sized once: a record holds a whole packet, which
    /// growing by doubling would copy several times).
    fn with_capacity(size: usize) -> Self {
        let mut v = Vec::with_capacity(size.saturating_add(1));
        v.push(RECORD_FORMAT);
        Self(v)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        // Lengths are u32: records never approach 4 GiB (packets are at most 256 MiB).
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a>(&'a [u8], u8);

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Result<Self, StoreError> {
        match b.split_first() {
            Some((&v, rest)) if (1..=RECORD_FORMAT).contains(&v) => Ok(Self(rest, v)),
            Some((&v, _)) if v > RECORD_FORMAT => Err(StoreError::NewerFormat(u32::from(v))),
            _ => Err(StoreError::Corrupt(format!("{what}: bad format byte"))),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("record truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, StoreError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            _ => Err(StoreError::Corrupt("bad option tag".into())),
        }
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| StoreError::Corrupt("string not UTF-8".into()))
    }
    fn end(&self) -> Result<(), StoreError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Corrupt("trailing bytes in record".into()))
        }
    }
}

impl SessionRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(self.protocol);
        w.u32(self.expiry_secs);
        w.opt_u64(self.disconnected_at_ms);
        w.u32(u32::try_from(self.subscriptions.len()).unwrap_or(u32::MAX));
        for s in &self.subscriptions {
            w.bytes(s.filter.as_bytes());
            w.u8(s.options);
            w.opt_u64(s.id.map(u64::from));
        }
        match &self.will {
            Some(will) => {
                w.u8(1);
                w.bytes(&will.packet);
                w.u32(will.delay_secs);
            }
            None => w.u8(0),
        }
        w.0
    }

    /// Decodes a record written by [`SessionRecord::encode`].
    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(b, "session")?;
        let protocol = r.u8()?;
        let expiry_secs = r.u32()?;
        let disconnected_at_ms = r.opt_u64()?;
        let n = r.u32()?;
        let mut subscriptions = Vec::new();
        for _ in 0..n {
            let filter = r.string()?;
            let options = r.u8()?;
            let id = match r.opt_u64()? {
                Some(v) => Some(
                    u32::try_from(v).map_err(|_| StoreError::Corrupt("subscription id".into()))?,
                ),
                None => None,
            };
            subscriptions.push(SubscriptionRecord {
                filter,
                options,
                id,
            });
        }
        let will = match r.u8()? {
            0 => None,
            1 => Some(WillRecord {
                packet: r.bytes()?.to_vec(),
                delay_secs: r.u32()?,
            }),
            _ => return Err(StoreError::Corrupt("bad will tag".into())),
        };
        r.end()?;
        Ok(Self {
            protocol,
            expiry_secs,
            disconnected_at_ms,
            subscriptions,
            will,
        })
    }
}

impl MessageRecord {
    /// Encodes the record whole: a shared payload is written into it.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_stored(None)
    }

    /// Encodes the record; with `body`, its shared payload is not written but referred to by
    /// that number (the store keeps the bytes under it, once for every record that refers to
    /// it).
    pub fn encode_stored(&self, body: Option<u64>) -> Vec<u8> {
        // The packet's length, the trailer (expiry, phase, packet id, body: at most 22 bytes).
        const FRAME: usize = 4 + 22;
        match (&self.payload, body) {
            (Some(p), None) => {
                let len = self.packet.len().saturating_add(p.bytes.len());
                let mut w = Writer::with_capacity(len.saturating_add(FRAME));
                // Lengths are u32, as in `Writer::bytes`.
                w.u32(u32::try_from(len).unwrap_or(u32::MAX));
                w.0.extend_from_slice(&self.packet);
                w.0.extend_from_slice(&p.bytes);
                self.trailer(w, body)
            }
            _ => {
                let mut w = Writer::with_capacity(self.packet.len().saturating_add(FRAME));
                w.bytes(&self.packet);
                self.trailer(w, body)
            }
        }
    }

    /// Ends a record after its packet.
    fn trailer(&self, mut w: Writer, body: Option<u64>) -> Vec<u8> {
        w.opt_u64(self.expires_at_ms);
        w.u8(match self.phase {
            MessagePhase::Queued => 0,
            MessagePhase::Published => 1,
            MessagePhase::Released => 2,
        });
        w.u16(self.packet_id);
        w.opt_u64(body);
        w.0
    }

    /// Decodes a record written whole by [`MessageRecord::encode`]; one that refers to a
    /// shared payload is an error here.
    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        match Self::decode_stored(b)? {
            (m, None) => Ok(m),
            (_, Some(_)) => Err(StoreError::Corrupt(
                "message refers to a shared payload".into(),
            )),
        }
    }

    /// Decodes a record written by [`MessageRecord::encode_stored`]: the record, without its
    /// shared payload, and the number of that payload if it has one.
    pub fn decode_stored(b: &[u8]) -> Result<(Self, Option<u64>), StoreError> {
        let mut r = Reader::new(b, "message")?;
        let packet = r.bytes()?.to_vec();
        let expires_at_ms = r.opt_u64()?;
        let phase = match r.u8()? {
            0 => MessagePhase::Queued,
            1 => MessagePhase::Published,
            2 => MessagePhase::Released,
            _ => return Err(StoreError::Corrupt("bad message phase".into())),
        };
        let packet_id = r.u16()?;
        let body = if r.1 >= 2 { r.opt_u64()? } else { None };
        r.end()?;
        let m = Self {
            packet,
            payload: None,
            expires_at_ms,
            phase,
            packet_id,
        };
        Ok((m, body))
    }

    /// The shared payload a record written by [`MessageRecord::encode_stored`] refers to,
    /// read without decoding (or copying) the rest: what deleting a record needs.
    pub fn stored_body(b: &[u8]) -> Result<Option<u64>, StoreError> {
        let mut r = Reader::new(b, "message")?;
        r.bytes()?;
        r.opt_u64()?;
        r.u8()?;
        r.u16()?;
        if r.1 >= 2 { r.opt_u64() } else { Ok(None) }
    }

    /// The whole PUBLISH packet: the record's packet followed by its shared payload.
    pub fn whole_packet(&self) -> Vec<u8> {
        match &self.payload {
            Some(p) => [self.packet.as_slice(), &p.bytes].concat(),
            None => self.packet.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionRecord {
        SessionRecord {
            protocol: 5,
            expiry_secs: 3600,
            disconnected_at_ms: Some(1_700_000_000_000),
            subscriptions: vec![
                SubscriptionRecord {
                    filter: "a/+/c".into(),
                    options: 0x21,
                    id: Some(7),
                },
                SubscriptionRecord {
                    filter: "$share/g/x".into(),
                    options: 1,
                    id: None,
                },
            ],
            will: Some(WillRecord {
                packet: vec![0x30, 3, 0, 1, b'w'],
                delay_secs: 5,
            }),
        }
    }

    #[test]
    fn round_trip() {
        let s = session();
        assert_eq!(SessionRecord::decode(&s.encode()).unwrap(), s);
        let m = MessageRecord {
            packet: vec![1, 2, 3],
            payload: None,
            expires_at_ms: None,
            phase: MessagePhase::Released,
            packet_id: 42,
        };
        assert_eq!(MessageRecord::decode(&m.encode()).unwrap(), m);
        // A shared payload: referred to by number, or written into the record.
        let shared = MessageRecord {
            payload: Some(SharedPayload {
                key: 0x1000,
                bytes: bytes::Bytes::from_static(b"xyz"),
            }),
            expires_at_ms: Some(9),
            ..m.clone()
        };
        let (back, body) = MessageRecord::decode_stored(&shared.encode_stored(Some(7))).unwrap();
        assert_eq!(body, Some(7));
        assert_eq!(
            (back.packet.as_slice(), back.payload),
            (&[1u8, 2, 3][..], None)
        );
        assert!(MessageRecord::decode(&shared.encode_stored(Some(7))).is_err());
        let whole = MessageRecord::decode(&shared.encode()).unwrap();
        assert_eq!(whole.packet, b"\x01\x02\x03xyz");
        assert_eq!(whole.whole_packet(), shared.whole_packet());
    }

    #[test]
    fn format_1_records_are_read() {
        // bytes(packet) | expiry none | phase Published | packet id 5, no payload reference.
        let old = [1, 0, 0, 0, 2, 0xAA, 0xBB, 0, 1, 0, 5];
        let (m, body) = MessageRecord::decode_stored(&old).unwrap();
        assert_eq!(
            (m.packet, m.phase, m.packet_id, body),
            (vec![0xAA, 0xBB], MessagePhase::Published, 5, None)
        );
    }

    #[test]
    fn damage_is_an_error() {
        let bytes = session().encode();
        for cut in 0..bytes.len() {
            assert!(
                SessionRecord::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SessionRecord::decode(&longer).is_err());
        let mut newer = bytes;
        newer[0] = RECORD_FORMAT + 1;
        assert!(matches!(
            SessionRecord::decode(&newer),
            Err(StoreError::NewerFormat(_))
        ));
        // A huge declared length is refused, not allocated.
        let mut huge = vec![RECORD_FORMAT];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(MessageRecord::decode(&huge).is_err());
    }
}
