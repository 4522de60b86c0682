//! Authentication and authorization of one connection: the CONNECT check, the publish,
//! subscribe and delivery checks, each a small function the protocol machine calls at one
//! place. Without a [`ListenerAccess`] (tests, embedding) everything is allowed.

use std::net::SocketAddr;
use std::sync::Arc;

use starling_auth::{
    AuthDecision, Authenticator, Authorizer, Client, ConnectInfo, DenyReason, EnhancedAuth,
};
use starling_proto::{Connect, ProtocolVersion, ReasonCode, TopicFilter, TopicName};

use super::active::Active;
use super::{Close, Connection, Cx};
use crate::metrics::AuthMethod;

/// How a listener checks its clients.
#[derive(Clone, Debug)]
pub struct ListenerAccess {
    /// The listener's name for logs and authenticators, e.g. `tls 0.0.0.0:8883`.
    pub name: Arc<str>,
    /// Who may connect.
    pub authenticator: Arc<dyn Authenticator>,
    /// What they may do; `None`: everything.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// MQTT 5 enhanced authentication methods offered; a CONNECT naming one of them is
    /// authenticated by it instead of `authenticator`.
    pub enhanced: Vec<Arc<dyn EnhancedAuth>>,
    /// Queue bounds for the sessions of this listener's clients, replacing `[limits]`'s;
    /// `None`: the broker's.
    pub session_queue: Option<crate::config::QueueBounds>,
    /// The broker's own connections (a bridge's local side): they alone may use client ids
    /// starting with `$bridge/`.
    pub internal: bool,
}

/// What the transport knows about a connection's peer.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// Identity from a verified TLS client certificate (CN or subject).
    pub certificate_identity: Option<String>,
}

/// The listener's checks and the peer, held by the connection.
#[derive(Debug)]
pub(super) struct ConnAccess {
    pub(super) listener: Arc<ListenerAccess>,
    /// Allocated only with a certificate identity or once the authorizer has been asked, so
    /// an idle connection carries one pointer here (every byte of its task counts).
    state: Option<Box<AccessState>>,
}

#[derive(Debug, Default)]
struct AccessState {
    /// Identity from a verified TLS client certificate.
    certificate_identity: Option<Box<str>>,
    /// The last publish and read answers.
    memos: Memos,
}

impl ConnAccess {
    fn certificate_identity(&self) -> Option<&str> {
        self.state.as_ref()?.certificate_identity.as_deref()
    }
}

/// Topics longer than this are not remembered (the copy would cost more than it saves).
const MEMO_TOPIC_MAX: usize = 256;

/// The authorizer's last answer for each question on the hot path. A device usually
/// publishes to one or a few topics, and a subscriber often receives one, so remembering
/// the last topic per question answers most checks with one comparison; any other topic
/// asks the authorizer. Valid while the authorizer's generation stays the same.
#[derive(Debug, Default)]
struct Memos {
    publish: Memo,
    read: Memo,
}

#[derive(Debug, Default)]
struct Memo {
    /// Generation the answer was given in; `None`: nothing remembered.
    generation: Option<u64>,
    /// A copy of the topic (a clone would keep alive the read buffer it points into); the
    /// buffer is reused from one topic to the next.
    topic: Vec<u8>,
    allowed: bool,
}

impl Memo {
    /// The remembered answer for `topic`, or the authorizer's (`ask`), remembered.
    fn answer(&mut self, generation: Option<u64>, topic: &str, ask: impl FnOnce() -> bool) -> bool {
        if generation.is_some() && self.generation == generation && self.topic == topic.as_bytes() {
            return self.allowed;
        }
        // The generation was read before asking: an answer from newer rules is at worst
        // remembered under an older generation, and asked again.
        let allowed = ask();
        if generation.is_some() && topic.len() <= MEMO_TOPIC_MAX {
            self.generation = generation;
            self.topic.clear();
            self.topic.extend_from_slice(topic.as_bytes());
            self.allowed = allowed;
        }
        allowed
    }
}

impl Connection {
    /// Applies `listener`'s authentication and authorization to this connection.
    pub fn with_access(mut self, listener: Arc<ListenerAccess>, peer: PeerInfo) -> Self {
        self.link.peer = peer.addr.or(self.link.peer);
        self.link.access = Some(ConnAccess {
            listener,
            state: peer.certificate_identity.map(|id| {
                Box::new(AccessState {
                    certificate_identity: Some(id.into_boxed_str()),
                    memos: Memos::default(),
                })
            }),
        });
        self
    }
}

impl Cx<'_> {
    /// Authenticates a CONNECT and checks its will topic. `Ok(username)` to go on;
    /// `Err(..)` once the refusal (v5 0x86 / 0x87, 3.x return code 4 / 5) is in the output.
    pub(super) fn authenticate(
        &mut self,
        c: &Connect,
        client_id: &str,
    ) -> Result<Option<Arc<str>>, Close> {
        let Some(access) = &self.link.access else {
            return Ok(c.username.as_deref().map(Arc::from));
        };
        let info = ConnectInfo {
            client_id,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            peer: self.link.peer,
            listener: &access.listener.name,
            certificate_identity: access.certificate_identity(),
        };
        match access.listener.authenticator.authenticate(&info) {
            AuthDecision::Allow { username } => self.admit(c, client_id, username.map(Arc::from)),
            AuthDecision::Deny(reason) => Err(self.refuse_authentication(c, client_id, reason)),
        }
    }

    /// An authenticated client may connect unless its will topic is not authorized. `Ok` with
    /// the username to go on; `Err(..)` once the refusal (0x87 / 5) is in the output.
    pub(super) fn admit(
        &mut self,
        c: &Connect,
        client_id: &str,
        username: Option<Arc<str>>,
    ) -> Result<Option<Arc<str>>, Close> {
        let authorizer = self
            .link
            .access
            .as_ref()
            .and_then(|a| a.listener.authorizer.as_ref());
        let will_allowed = match (&c.will, authorizer) {
            (Some(w), Some(z)) => z.can_publish(
                &Client {
                    client_id,
                    username: username.as_deref(),
                },
                w.topic.as_str(),
            ),
            _ => true,
        };
        if will_allowed {
            return Ok(username);
        }
        self.broker.metrics.acl_denied.inc();
        Err(self.refuse_auth_with(
            c,
            client_id,
            ReasonCode::NotAuthorized,
            "will topic not authorized",
        ))
    }

    /// Refuses a client that failed authentication (v5 0x86 / 0x87, 3.x return code 4 / 5),
    /// counted and logged; the CONNACK is in the output.
    pub(super) fn refuse_authentication(
        &mut self,
        c: &Connect,
        client_id: &str,
        reason: DenyReason,
    ) -> Close {
        let (reason, detail) = match reason {
            DenyReason::BadUserNameOrPassword => (
                ReasonCode::BadUserNameOrPassword,
                "bad user name or password",
            ),
            DenyReason::NotAuthorized => (ReasonCode::NotAuthorized, "not authorized"),
        };
        self.refuse_auth_with(c, client_id, reason, detail)
    }

    pub(super) fn refuse_auth_with(
        &mut self,
        c: &Connect,
        client_id: &str,
        reason: ReasonCode,
        detail: &str,
    ) -> Close {
        let m = &self.broker.metrics;
        m.auth_refused.inc();
        m.auth_failed.of(self.auth_method(c)).inc();
        let listener = self
            .link
            .access
            .as_ref()
            .map_or("", |a| &*a.listener.name)
            .to_owned();
        let version: ProtocolVersion = c.protocol;
        let detail = format!(
            "{detail} (client id {client_id:?}, username {:?}, listener {listener})",
            c.username.as_deref().unwrap_or(""),
        );
        self.refuse_connect(version, reason, Default::default(), &detail)
    }

    /// How `c` authenticates (or tries to), for the per-method counters.
    pub(super) fn auth_method(&self, c: &Connect) -> AuthMethod {
        let certificate = self
            .link
            .access
            .as_ref()
            .is_some_and(|a| a.certificate_identity().is_some());
        if c.properties.authentication_method.is_some() {
            AuthMethod::Enhanced
        } else if c.password.is_some() {
            AuthMethod::Password
        } else if certificate {
            AuthMethod::Certificate
        } else {
            AuthMethod::Anonymous
        }
    }

    /// The enhanced authentication method named `name`, if this listener offers it.
    pub(super) fn enhanced_method(&self, name: &str) -> Option<Arc<dyn EnhancedAuth>> {
        self.link.access.as_ref().and_then(|a| {
            a.listener
                .enhanced
                .iter()
                .find(|m| m.method() == name)
                .cloned()
        })
    }
}

fn client<'a>(a: &'a Active) -> Client<'a> {
    Client {
        client_id: a.client_id(),
        username: a.username.as_deref(),
    }
}

fn authorizer(access: Option<&ConnAccess>) -> Option<&dyn Authorizer> {
    access.and_then(|x| x.listener.authorizer.as_deref())
}

/// Asks `access`'s authorizer, if any, through the connection's memo for `question`.
fn ask(
    access: Option<&mut ConnAccess>,
    question: fn(&mut Memos) -> &mut Memo,
    topic: &TopicName,
    check: impl FnOnce(&dyn Authorizer, &str) -> bool,
) -> bool {
    let Some(access) = access else {
        return true;
    };
    let Some(z) = access.listener.authorizer.as_deref() else {
        return true;
    };
    let topic = topic.as_str();
    let Some(generation) = z.generation() else {
        return check(z, topic);
    };
    let memo = question(&mut access.state.get_or_insert_default().memos);
    memo.answer(Some(generation), topic, || check(z, topic))
}

/// May the client publish to `topic`?
pub(super) fn may_publish(access: Option<&mut ConnAccess>, a: &Active, topic: &TopicName) -> bool {
    ask(
        access,
        |m| &mut m.publish,
        topic,
        |z, t| z.can_publish(&client(a), t),
    )
}

/// May the client subscribe to `filter` (a shared subscription is checked on its filter
/// without the `$share/{group}/` prefix)?
pub(super) fn may_subscribe(access: Option<&ConnAccess>, a: &Active, filter: &TopicFilter) -> bool {
    authorizer(access).is_none_or(|z| {
        std::str::from_utf8(filter.match_filter()).is_ok_and(|f| z.can_subscribe(&client(a), f))
    })
}

/// May the client receive a message published to `topic`? Asked at delivery time.
#[inline]
pub(super) fn may_read(access: Option<&mut ConnAccess>, a: &Active, topic: &TopicName) -> bool {
    ask(
        access,
        |m| &mut m.read,
        topic,
        |z, t| z.can_read(&client(a), t),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_reuses_an_answer_only_for_the_same_topic_and_generation() {
        let mut m = Memo::default();
        let asked = &std::cell::Cell::new(0);
        let ask = |answer: bool| {
            move || {
                asked.set(asked.get() + 1);
                answer
            }
        };
        assert!(m.answer(Some(1), "a/b", ask(true)));
        assert!(m.answer(Some(1), "a/b", || unreachable!("remembered")));
        assert!(!m.answer(Some(1), "a/c", ask(false)), "another topic");
        assert!(!m.answer(Some(1), "a/c", || unreachable!("remembered")));
        assert!(m.answer(Some(2), "a/c", ask(true)), "a reload");
        assert!(
            !m.answer(None, "a/c", ask(false)),
            "no generation: always asked"
        );
        assert!(!m.answer(None, "a/c", ask(false)));
        let long = "x".repeat(MEMO_TOPIC_MAX + 1);
        assert!(m.answer(Some(2), &long, ask(true)));
        assert!(
            !m.answer(Some(2), &long, ask(false)),
            "long topics not kept"
        );
        assert_eq!(asked.get(), 7);
    }
}
