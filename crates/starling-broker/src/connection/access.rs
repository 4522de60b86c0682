//! Authentication and authorization of one connection: the CONNECT check, the publish,
//! subscribe and delivery checks, each a small function the protocol machine calls at one
//! place. Without a [`ListenerAccess`] (tests, embedding) everything is allowed.
//!
//! A check answered later (a backend that asks an HTTP service) parks the packet that asked:
//! the connection reads nothing more, the I/O layer takes the check's future
//! ([`Connection::take_check`]), runs it, and gives the answer back
//! ([`Connection::handle_check`]); the packet is then handled again from the start, and each
//! check finds its answer by what it asked (no side effect happens before a packet's checks
//! are all answered). Rules the authentication granted the session (a token's ACL claim) are
//! checked before the listener's authorizer, and the credentials' end (a token's `exp`)
//! closes the connection (`Active::on_timeout`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use starling_auth::{
    AclFile, Action, Answer, AuthDecision, Authenticator, Authorizer, Client, ConnectInfo,
    DenyReason, EnhancedAuth, Grant, Pending,
};
use starling_proto::{Connect, Packet, ProtocolVersion, ReasonCode, TopicFilter, TopicName};

use super::active::Active;
use super::{Close, Connection, Cx, Link};
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
    /// Identity from a verified TLS client certificate (CN or subject), or from a proxy
    /// that ended TLS and vouched for it (the PROXY protocol's SSL TLV).
    pub certificate_identity: Option<String>,
    /// A Unix socket client's user id (its peer credentials).
    pub unix_uid: Option<u32>,
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
    /// A Unix socket client's user id.
    unix_uid: Option<u32>,
    /// The last publish and read answers.
    memos: Memos,
    /// Rules the authentication granted this session; when present they decide.
    session_acl: Option<Arc<AclFile>>,
    /// When the credentials stop being valid.
    expires_at: Option<Instant>,
    /// A packet waiting for a check answered later, and the answers so far.
    checks: Option<Box<Checks>>,
}

/// An answer the I/O layer brings back for a check that came [`Answer::Later`].
#[derive(Clone, Debug)]
pub enum CheckAnswer {
    /// An authentication's decision.
    Auth(AuthDecision),
    /// An authorization's answer.
    Allowed(bool),
    /// A hook's decision.
    Hook(super::hooked::HookAnswer),
}

/// What a check asked: answers are found again by it when the packet is handled again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CheckKey {
    Auth,
    Acl(Action, Box<str>),
    /// The hook at this index in the broker's list, at this point of the packet.
    Hook(usize, super::hooked::HookAt),
}

/// A parked packet and its checks.
#[derive(Default)]
struct Checks {
    /// The packet to handle again once the answer is in.
    packet: Option<Packet>,
    /// The outstanding check's future, until the I/O layer takes it.
    future: Option<Pending<CheckAnswer>>,
    /// What the outstanding check asked.
    pending: Option<CheckKey>,
    /// Answers for the parked packet (a SUBSCRIBE may ask several times).
    answers: Vec<(CheckKey, CheckAnswer)>,
}

impl fmt::Debug for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checks")
            .field("packet", &self.packet.as_ref().map(Packet::packet_type))
            .field("future", &self.future.is_some())
            .field("pending", &self.pending)
            .field("answers", &self.answers)
            .finish()
    }
}

/// A check's outcome: the answer, or the packet must wait for it.
pub(super) enum Asked<T> {
    Now(T),
    Parked,
}

impl ConnAccess {
    /// `listener`'s checks, nothing asked yet.
    pub(super) fn new(listener: Arc<ListenerAccess>) -> Self {
        Self {
            listener,
            state: None,
        }
    }

    /// Forgets the parked packet's checks (the packet cannot wait for them).
    pub(super) fn drop_checks(&mut self) {
        if let Some(state) = &mut self.state {
            state.checks = None;
        }
    }

    fn certificate_identity(&self) -> Option<&str> {
        self.state.as_ref()?.certificate_identity.as_deref()
    }

    /// A Unix socket client's user id.
    pub(super) fn unix_uid(&self) -> Option<u32> {
        self.state.as_ref()?.unix_uid
    }

    /// The answer to `key`: one given earlier for the parked packet, or `ask`'s. A later
    /// answer parks: its future waits in the state for the I/O layer.
    pub(super) fn consult(
        &mut self,
        key: CheckKey,
        ask: impl FnOnce() -> Answer<CheckAnswer>,
    ) -> Asked<CheckAnswer> {
        if let Some(checks) = self.state.as_ref().and_then(|s| s.checks.as_ref())
            && let Some((_, answer)) = checks.answers.iter().find(|(k, _)| *k == key)
        {
            return Asked::Now(answer.clone());
        }
        match ask() {
            Answer::Now(a) => Asked::Now(a),
            Answer::Later(future) => {
                let state = self.state.get_or_insert_default();
                let checks = state.checks.get_or_insert_default();
                checks.future = Some(future);
                checks.pending = Some(key);
                Asked::Parked
            }
        }
    }

    /// An answer kept for the parked packet under a key `which` picks, if any.
    pub(super) fn recall(
        &self,
        which: impl Fn(&CheckKey) -> bool,
    ) -> Option<&(CheckKey, CheckAnswer)> {
        let checks = self.state.as_ref()?.checks.as_ref()?;
        checks.answers.iter().find(|(k, _)| which(k))
    }

    /// Keeps `answer` under `key` for the packet being parked, replacing those whose keys
    /// `replaces` picks: what the packet's earlier steps came to, so that handling it again
    /// does not repeat them.
    pub(super) fn remember(
        &mut self,
        key: CheckKey,
        answer: CheckAnswer,
        replaces: impl Fn(&CheckKey) -> bool,
    ) {
        let state = self.state.get_or_insert_default();
        let checks = state.checks.get_or_insert_default();
        checks.answers.retain(|(k, _)| !replaces(k));
        checks.answers.push((key, answer));
    }

    /// Whether a packet waits for a check's answer.
    fn is_checking(&self) -> bool {
        (self.state.as_ref())
            .and_then(|s| s.checks.as_ref())
            .is_some_and(|c| c.pending.is_some())
    }
}

impl Connection {
    /// The future of a check whose answer a packet waits for, once; the I/O layer runs it
    /// (reading nothing from the client meanwhile) and gives its output to
    /// [`Connection::handle_check`]. Dropping it closes nothing: the connection keeps waiting
    /// until its CONNECT timeout or keep-alive ends it.
    pub fn take_check(&mut self) -> Option<Pending<CheckAnswer>> {
        let state = self.link.access.as_mut()?.state.as_mut()?;
        state.checks.as_mut()?.future.take()
    }

    /// Whether a packet waits for a check's answer (input is not read meanwhile).
    pub fn is_checking(&self) -> bool {
        self.link
            .access
            .as_ref()
            .is_some_and(ConnAccess::is_checking)
    }

    /// The answer to the check the parked packet waits for: the packet is handled again
    /// (it may park again for another check). Input left in the read buffer is the caller's
    /// to hand over next (`handle_input`).
    pub fn handle_check(&mut self, broker: &crate::Broker, now: Instant, answer: CheckAnswer) {
        let Some(checks) = (self.link.access.as_mut())
            .and_then(|a| a.state.as_mut())
            .and_then(|s| s.checks.as_mut())
        else {
            return;
        };
        let Some(key) = checks.pending.take() else {
            return;
        };
        checks.answers.push((key, answer));
        let Some(packet) = checks.packet.take() else {
            return;
        };
        self.dispatch(broker, now, packet, None);
        // Done with the packet unless it parked again.
        if let Some(state) = self.link.access.as_mut().and_then(|a| a.state.as_mut())
            && state.checks.as_ref().is_some_and(|c| c.pending.is_none())
        {
            state.checks = None;
        }
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
    /// The remembered answer for `topic` in `generation`, if any.
    fn get(&self, generation: u64, topic: &str) -> Option<bool> {
        (self.generation == Some(generation) && self.topic == topic.as_bytes())
            .then_some(self.allowed)
    }

    /// Remembers `allowed` for `topic` (unless the topic is too long to be worth it). The
    /// generation was read before asking: an answer from newer rules is at worst remembered
    /// under an older generation, and asked again.
    fn put(&mut self, generation: u64, topic: &str, allowed: bool) {
        if topic.len() <= MEMO_TOPIC_MAX {
            self.generation = Some(generation);
            self.topic.clear();
            self.topic.extend_from_slice(topic.as_bytes());
            self.allowed = allowed;
        }
    }
}

impl Connection {
    /// Applies `listener`'s authentication and authorization to this connection.
    pub fn with_access(mut self, listener: Arc<ListenerAccess>, peer: PeerInfo) -> Self {
        self.link.peer = peer.addr.or(self.link.peer);
        self.link.access = Some(ConnAccess {
            listener,
            state: (peer.certificate_identity.is_some() || peer.unix_uid.is_some()).then(|| {
                Box::new(AccessState {
                    certificate_identity: peer.certificate_identity.map(String::into_boxed_str),
                    unix_uid: peer.unix_uid,
                    ..AccessState::default()
                })
            }),
        });
        self
    }
}

/// Why CONNECT's checks stopped short of a username.
pub(super) enum Halt {
    /// Refused: the CONNACK is in the output.
    Refused(Close),
    /// A check is answered later: park the CONNECT.
    Parked,
}

impl Cx<'_> {
    /// Parks `packet` until the outstanding check's answer comes (`handle_check`).
    pub(super) fn park(&mut self, packet: Packet) {
        if let Some(checks) = (self.link.access.as_mut())
            .and_then(|a| a.state.as_mut())
            .and_then(|s| s.checks.as_mut())
        {
            checks.packet = Some(packet);
        }
    }

    /// Authenticates a CONNECT and checks its will topic. `Ok(username)` to go on;
    /// `Err(Refused)` once the refusal (v5 0x86 / 0x87, 3.x return code 4 / 5) is in the
    /// output; `Err(Parked)` when a check is answered later.
    pub(super) fn authenticate(
        &mut self,
        c: &Connect,
        client_id: &str,
    ) -> Result<Option<Arc<str>>, Halt> {
        let Some(access) = &mut self.link.access else {
            return Ok(c.username.as_deref().map(Arc::from));
        };
        let listener = access.listener.clone();
        let certificate_identity = access.certificate_identity().map(str::to_owned);
        let info = ConnectInfo {
            client_id,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            peer: self.link.peer,
            listener: &listener.name,
            certificate_identity: certificate_identity.as_deref(),
            unix_uid: access.unix_uid(),
        };
        let asked = access.consult(CheckKey::Auth, || {
            listener
                .authenticator
                .authenticate(&info)
                .map(CheckAnswer::Auth)
        });
        let decision = match asked {
            Asked::Now(CheckAnswer::Auth(d)) => d,
            Asked::Now(CheckAnswer::Allowed(_) | CheckAnswer::Hook(_)) => {
                AuthDecision::Deny(DenyReason::NotAuthorized)
            }
            Asked::Parked => return Err(Halt::Parked),
        };
        match decision {
            AuthDecision::Allow(grant) => {
                let username = grant.username.as_deref().map(Arc::from);
                self.keep_grant(grant);
                self.admit(c, client_id, username, true)
            }
            AuthDecision::Deny(reason) => Err(Halt::Refused(
                self.refuse_authentication(c, client_id, reason),
            )),
        }
    }

    /// Keeps what a grant gives the session beyond its username: its rules and the end of
    /// its credentials.
    pub(super) fn keep_grant(&mut self, grant: Grant) {
        let Some(access) = &mut self.link.access else {
            return;
        };
        if grant.acl.is_none() && grant.valid_for.is_none() {
            if let Some(state) = &mut access.state {
                state.session_acl = None;
                state.expires_at = None;
                // Answers from the session's rules no longer hold.
                state.memos = Memos::default();
            }
            return;
        }
        let now = self.now;
        let state = access.state.get_or_insert_default();
        state.session_acl = grant.acl;
        state.memos = Memos::default();
        // A validity too far to represent never ends.
        state.expires_at = grant.valid_for.and_then(|d| now.checked_add(d));
    }

    /// An authenticated client may connect unless its will topic is not authorized. `Ok` with
    /// the username to go on; `Err(Refused)` once the refusal (0x87 / 5) is in the output;
    /// `Err(Parked)` when the will check is answered later and `may_wait` (a CONNECT is
    /// parked; the end of an enhanced authentication exchange cannot be, and refuses).
    pub(super) fn admit(
        &mut self,
        c: &Connect,
        client_id: &str,
        username: Option<Arc<str>>,
        may_wait: bool,
    ) -> Result<Option<Arc<str>>, Halt> {
        let will_allowed = match (&c.will, self.link.access.as_mut()) {
            (Some(w), Some(access)) => {
                let client = Client {
                    client_id,
                    username: username.as_deref(),
                };
                match check(access, &client, Action::Publish, w.topic.as_str()) {
                    Asked::Now(allowed) => allowed,
                    Asked::Parked if may_wait => return Err(Halt::Parked),
                    Asked::Parked => {
                        // Nothing to park: the exchange's last step cannot be repeated.
                        access.drop_checks();
                        false
                    }
                }
            }
            _ => true,
        };
        if will_allowed {
            return Ok(username);
        }
        self.broker.metrics.acl_denied.inc();
        Err(Halt::Refused(self.refuse_auth_with(
            c,
            client_id,
            ReasonCode::NotAuthorized,
            "will topic not authorized",
        )))
    }

    /// Refuses a client that failed authentication (v5 0x86 / 0x87, 3.x return code 4 / 5),
    /// or whose check could not be made now (v5 0x89, 3.x return code 3), counted and
    /// logged; the CONNACK is in the output.
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
            DenyReason::Busy => (
                ReasonCode::ServerBusy,
                "server busy: password checks queued at their bound",
            ),
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

/// When the connection's credentials stop being valid, if they do.
pub(super) fn credentials_end(link: &Link) -> Option<Instant> {
    link.access.as_ref()?.state.as_ref()?.expires_at
}

/// Whether a packet of the connection waits for a check's answer.
pub(super) fn checking(link: &Link) -> bool {
    link.access.as_ref().is_some_and(ConnAccess::is_checking)
}

fn client<'a>(a: &'a Active) -> Client<'a> {
    Client {
        client_id: a.client_id(),
        username: a.username(),
    }
}

/// The memo's generation for answers from a session's own rules: they are fixed while the
/// session has them, and `keep_grant` clears the memos whenever they change.
const SESSION_RULES: u64 = u64::MAX;

/// The answer of the session's own rules, if it has any (through the memo for publish and
/// read: a token's rules walk their tries once per topic, not once per message).
fn session_rules(
    state: &mut AccessState,
    client: &Client<'_>,
    action: Action,
    topic: &str,
) -> Option<bool> {
    let acl = state.session_acl.as_ref()?;
    let memo = match action {
        Action::Publish => &mut state.memos.publish,
        Action::Read => &mut state.memos.read,
        Action::Subscribe => return Some(acl.allows(client, action, topic)),
    };
    if let Some(allowed) = memo.get(SESSION_RULES, topic) {
        return Some(allowed);
    }
    let allowed = acl.allows(client, action, topic);
    memo.put(SESSION_RULES, topic, allowed);
    Some(allowed)
}

/// `client` may do `action` on `topic`: the session's own rules if it has any, else the
/// listener's authorizer (through the memo for publish and read), else allowed.
fn check(access: &mut ConnAccess, client: &Client<'_>, action: Action, topic: &str) -> Asked<bool> {
    if let Some(allowed) =
        (access.state.as_deref_mut()).and_then(|state| session_rules(state, client, action, topic))
    {
        return Asked::Now(allowed);
    }
    let listener = access.listener.clone();
    let Some(z) = listener.authorizer.as_deref() else {
        return Asked::Now(true);
    };
    let ask = || match action {
        Action::Publish => z.can_publish(client, topic),
        Action::Subscribe => z.can_subscribe(client, topic),
        Action::Read => Answer::Now(z.can_read(client, topic)),
    };
    let memo_of: Option<fn(&mut Memos) -> &mut Memo> = match action {
        Action::Publish => Some(|m| &mut m.publish),
        Action::Read => Some(|m| &mut m.read),
        Action::Subscribe => None,
    };
    let generation = z.generation();
    if let (Some(generation), Some(memo_of)) = (generation, memo_of)
        && access
            .state
            .as_ref()
            .and_then(|s| s.checks.as_ref())
            .is_none()
    {
        let memo = memo_of(&mut access.state.get_or_insert_default().memos);
        if let Some(allowed) = memo.get(generation, topic) {
            return Asked::Now(allowed);
        }
        if let Answer::Now(allowed) = ask() {
            memo.put(generation, topic, allowed);
            return Asked::Now(allowed);
        }
    }
    let key = CheckKey::Acl(action, topic.into());
    match access.consult(key, || ask().map(CheckAnswer::Allowed)) {
        Asked::Now(CheckAnswer::Allowed(allowed)) => Asked::Now(allowed),
        Asked::Now(CheckAnswer::Auth(_) | CheckAnswer::Hook(_)) => Asked::Now(false),
        Asked::Parked => Asked::Parked,
    }
}

/// May the client publish to `topic`? `Parked`: the answer comes later (park the PUBLISH).
pub(super) fn may_publish(
    access: Option<&mut ConnAccess>,
    a: &Active,
    topic: &TopicName,
) -> Asked<bool> {
    match access {
        None => Asked::Now(true),
        Some(access) => check(access, &client(a), Action::Publish, topic.as_str()),
    }
}

/// May the client subscribe to `filter` (a shared subscription is checked on its filter
/// without the `$share/{group}/` prefix)? `Parked`: the answer comes later.
pub(super) fn may_subscribe(
    access: Option<&mut ConnAccess>,
    a: &Active,
    filter: &TopicFilter,
) -> Asked<bool> {
    let Some(access) = access else {
        return Asked::Now(true);
    };
    match std::str::from_utf8(filter.match_filter()) {
        Ok(f) => check(access, &client(a), Action::Subscribe, f),
        Err(_) => Asked::Now(false),
    }
}

/// May the client receive a message published to `topic`? Asked at delivery time, and
/// answered at once (a backend that cannot answers no).
#[inline]
pub(super) fn may_read(access: Option<&mut ConnAccess>, a: &Active, topic: &TopicName) -> bool {
    match access {
        None => true,
        Some(access) if access.state.is_none() && access.listener.authorizer.is_none() => true,
        Some(access) => {
            let client = client(a);
            let topic = topic.as_str();
            if let Some(allowed) = (access.state.as_deref_mut())
                .and_then(|state| session_rules(state, &client, Action::Read, topic))
            {
                return allowed;
            }
            let Some(z) = access.listener.authorizer.clone() else {
                return true;
            };
            let Some(generation) = z.generation() else {
                return z.can_read(&client, topic);
            };
            let memo = &mut access.state.get_or_insert_default().memos.read;
            if let Some(allowed) = memo.get(generation, topic) {
                return allowed;
            }
            let allowed = z.can_read(&client, topic);
            memo.put(generation, topic, allowed);
            allowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_reuses_an_answer_only_for_the_same_topic_and_generation() {
        let mut m = Memo::default();
        assert_eq!(m.get(1, "a/b"), None);
        m.put(1, "a/b", true);
        assert_eq!(m.get(1, "a/b"), Some(true));
        assert_eq!(m.get(1, "a/c"), None, "another topic");
        assert_eq!(m.get(2, "a/b"), None, "a reload");
        m.put(2, "a/c", false);
        assert_eq!(m.get(2, "a/c"), Some(false));
        assert_eq!(m.get(2, "a/b"), None, "one topic remembered");
        let long = "x".repeat(MEMO_TOPIC_MAX + 1);
        m.put(2, &long, true);
        assert_eq!(m.get(2, &long), None, "long topics not kept");
        assert_eq!(m.get(2, "a/c"), Some(false));
    }
}
