//! The protocol machine with a method of the test's own, in memory.

use super::*;

/// `TEST`: data `user:NAME` authenticates as NAME (with final data `welcome`), `fail` fails
/// with 0x86, anything else asks for more.
#[derive(Debug)]
struct TestMethod;

#[derive(Debug)]
struct TestExchange;

impl EnhancedAuth for TestMethod {
    fn method(&self) -> &str {
        "TEST"
    }
    fn exchange(&self) -> Box<dyn AuthExchange> {
        Box::new(TestExchange)
    }
}

impl AuthExchange for TestExchange {
    fn start(&mut self, _: &ExchangeInfo<'_>, data: Option<&[u8]>) -> AuthStep {
        self.next(data)
    }
    fn next(&mut self, data: Option<&[u8]>) -> AuthStep {
        let data = data.unwrap_or_default();
        if let Some(name) = data.strip_prefix(b"user:") {
            AuthStep::Success {
                username: String::from_utf8(name.to_vec()).unwrap(),
                data: Some(b"welcome".to_vec()),
                acl: None,
                valid_for: None,
            }
        } else if data == b"fail" {
            AuthStep::Fail(DenyReason::BadUserNameOrPassword)
        } else {
            AuthStep::Continue(b"more?".to_vec())
        }
    }
}

struct Machine {
    broker: Arc<Broker>,
    conn: Connection,
    now: Instant,
}

impl Machine {
    fn new() -> Self {
        let now = Instant::now();
        let broker = Arc::new(Broker::with_features(
            Limits::default(),
            Features::default(),
            now,
        ));
        let access = ListenerAccess {
            name: Arc::from("test"),
            authenticator: Arc::new(StandardAuthenticator {
                allow_anonymous: false,
                passwords: None,
                identity_as_username: false,
            }),
            authorizer: None,
            enhanced: vec![Arc::new(TestMethod)],
            session_queue: None,
            internal: false,
        };
        let conn = Connection::new(starling_broker::wake::Flag::new(), None, now)
            .with_access(Arc::new(access), PeerInfo::default());
        Self { broker, conn, now }
    }

    /// `Err` with the reason once the connection has closed.
    fn result(&self) -> Result<(), Close> {
        match self.conn.close_reason() {
            Some(c) => Err(c.clone()),
            None => Ok(()),
        }
    }

    fn send(&mut self, p: Packet) -> Result<(), Close> {
        self.conn.handle_packet(&self.broker, self.now, p);
        self.result()
    }

    fn deadline(&self) -> Option<Instant> {
        self.conn.poll_timeout(&self.broker)
    }

    fn timeout(&mut self, at: Instant) -> Result<(), Close> {
        self.conn.handle_timeout(&self.broker, at);
        self.result()
    }

    fn output(&mut self) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        self.conn.poll_transmit(&self.broker, self.now, &mut buf);
        let mut out = Vec::new();
        while let Some(p) = starling_proto::decode(&mut buf, V5, &DecodeLimits::default()).unwrap()
        {
            out.push(p);
        }
        out
    }

    fn connect(&mut self, data: &[u8]) -> Result<(), Close> {
        let c = method_connect("m", "TEST", Some(data.to_vec()));
        self.send(Packet::Connect(Box::new(c)))
    }

    fn auth(&mut self, reason: ReasonCode, data: &[u8]) -> Result<(), Close> {
        let p = Packet::Auth(Auth {
            reason,
            properties: starling_proto::PropertyValues {
                authentication_method: Some("TEST".into()),
                authentication_data: Some(Bytes::copy_from_slice(data)),
                ..starling_proto::PropertyValues::default()
            }
            .into(),
        });
        self.send(p)
    }

    fn connected(&mut self) {
        self.connect(b"user:alice").unwrap();
        match &self.output()[..] {
            [Packet::ConnAck(ack)] => {
                assert_eq!(ack.reason, ReasonCode::Success);
                assert_eq!(
                    ack.properties.authentication_method.as_deref(),
                    Some("TEST")
                );
                assert_eq!(
                    ack.properties.authentication_data.as_deref(),
                    Some(&b"welcome"[..])
                );
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

impl Machine {
    /// Goes on with the exchange `steps` times (each answered with AUTH 0x18), then once more:
    /// that one is over the bound and refused with 0x87.
    fn continue_until_refused(&mut self, steps: u32) {
        for _ in 0..steps {
            self.auth(ReasonCode::ContinueAuthentication, b"again")
                .unwrap();
            assert_eq!(
                auth_reason(&self.output()),
                Some(ReasonCode::ContinueAuthentication)
            );
        }
        let closing = self
            .auth(ReasonCode::ContinueAuthentication, b"again")
            .unwrap_err();
        assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    }
}

fn auth_reason(packets: &[Packet]) -> Option<ReasonCode> {
    match packets {
        [Packet::Auth(a)] => Some(a.reason),
        _ => None,
    }
}

#[test]
fn exchange_is_bounded_in_steps() {
    let mut m = Machine::new();
    m.connect(b"hello").unwrap();
    assert_eq!(
        auth_reason(&m.output()),
        Some(ReasonCode::ContinueAuthentication)
    );
    m.continue_until_refused(MAX_AUTH_STEPS);
    match &m.output()[..] {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("expected CONNACK 0x87, got {other:?}"),
    }
    assert!(!m.conn.is_active());
}

#[test]
fn a_failed_exchange_is_refused_with_its_reason() {
    let mut m = Machine::new();
    m.connect(b"hello").unwrap();
    m.output();
    let closing = m
        .auth(ReasonCode::ContinueAuthentication, b"fail")
        .unwrap_err();
    assert_eq!(closing.reason, ReasonCode::BadUserNameOrPassword);
    match &m.output()[..] {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword),
        other => panic!("expected CONNACK 0x86, got {other:?}"),
    }
}

#[test]
fn connect_timeout_applies_during_the_exchange() {
    let mut m = Machine::new();
    m.connect(b"hello").unwrap();
    m.output();
    let timeout = Duration::from_secs(Limits::default().connect_timeout_secs);
    assert_eq!(m.deadline(), Some(m.now + timeout));
    let closing = m.timeout(m.now + timeout).unwrap_err();
    assert_eq!(closing.reason, ReasonCode::MaximumConnectTime);
}

#[test]
fn reauthentication_in_memory() {
    let mut m = Machine::new();
    m.connected();
    // One step, then success with the same identity.
    m.auth(ReasonCode::ReAuthenticate, b"hello").unwrap();
    assert_eq!(
        auth_reason(&m.output()),
        Some(ReasonCode::ContinueAuthentication)
    );
    m.auth(ReasonCode::ContinueAuthentication, b"user:alice")
        .unwrap();
    match &m.output()[..] {
        [Packet::Auth(a)] => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert_eq!(a.properties.authentication_method.as_deref(), Some("TEST"));
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"welcome"[..])
            );
        }
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    // Bounded in steps: the 0x19 and the 0x18s together.
    m.auth(ReasonCode::ReAuthenticate, b"hello").unwrap();
    m.output();
    m.continue_until_refused(MAX_AUTH_STEPS - 1);
    match &m.output()[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
}

#[test]
fn reauthentication_that_fails_as_someone_else_or_too_slow_is_refused() {
    let mut m = Machine::new();
    m.connected();
    let closing = m.auth(ReasonCode::ReAuthenticate, b"fail").unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    assert!(
        matches!(&m.output()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::NotAuthorized)
    );

    let mut m = Machine::new();
    m.connected();
    let closing = m
        .auth(ReasonCode::ReAuthenticate, b"user:mallory")
        .unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    assert!(
        matches!(&m.output()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::NotAuthorized)
    );

    let mut m = Machine::new();
    m.connected();
    m.auth(ReasonCode::ReAuthenticate, b"hello").unwrap();
    m.output();
    let timeout = Duration::from_secs(Limits::default().connect_timeout_secs);
    assert_eq!(m.deadline(), Some(m.now + timeout), "before keep-alive");
    m.timeout(m.now + timeout / 2).unwrap();
    let closing = m.timeout(m.now + timeout).unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    assert!(
        matches!(&m.output()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::NotAuthorized)
    );
}
