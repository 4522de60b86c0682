//! The authentication and authorization chains: the ordered lists of backends a listener
//! asks, and the answers a backend may give, now or later.
//!
//! Authentication: each [`AuthBackend`] answers [`Verdict::Allow`] (with a [`Grant`]: the
//! username, rules for that session, how long the credentials stay valid),
//! [`Verdict::Deny`], or [`Verdict::Pass`] ("not mine": the next backend is asked). The first
//! definite answer wins. When every backend passes, the anonymous rules apply
//! ([`AuthChain`]). Authorization: each [`AclBackend`] answers allow, deny, or not mine; the
//! first definite answer wins, and when all pass the chain's `no_match` answer applies
//! ([`AclChain`]). Rules a backend granted the session (a token's ACL claim) are checked by
//! the broker before the chain.
//!
//! A backend that has to ask something slow (an HTTP service, a key server) answers
//! [`Answer::Later`] with a future. The broker core does not run futures: it parks the
//! packet, hands the future to the connection's I/O task, and goes on with the answer when
//! the task gives it back. A backend's future must end on its own (its own timeout, with the
//! backend's failure mode), and must not borrow from the question: it owns what it needs.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::acl::AclFile;
use crate::{AuthDecision, Authenticator, Authorizer, Client, ConnectInfo, DenyReason};

/// A future a backend returns for an answer that is not ready yet.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An answer now, or a future that gives it.
pub enum Answer<T> {
    /// Known now.
    Now(T),
    /// Given by the future (run by the connection's I/O task).
    Later(Pending<T>),
}

impl<T: fmt::Debug> fmt::Debug for Answer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Now(t) => f.debug_tuple("Now").field(t).finish(),
            Self::Later(_) => f.write_str("Later(..)"),
        }
    }
}

impl<T: Send + 'static> Answer<T> {
    /// The answer, waiting for it if needed.
    pub async fn resolve(self) -> T {
        match self {
            Self::Now(t) => t,
            Self::Later(f) => f.await,
        }
    }

    /// The answer mapped by `f`, now or later.
    pub fn map<U>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Answer<U> {
        match self {
            Self::Now(t) => Answer::Now(f(t)),
            Self::Later(fut) => Answer::Later(Box::pin(async move { f(fut.await) })),
        }
    }
}

/// What a client is granted when it is authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The identity the broker uses from now on (ACLs, logs); `None`: anonymous.
    pub username: Option<String>,
    /// Rules for this session alone (a token's ACL claim, an HTTP answer's), checked before
    /// the listener's authorizers: when present they decide, and what they do not grant is
    /// refused.
    pub acl: Option<Arc<AclFile>>,
    /// How long the credentials stay valid from now (a token's `exp`); the broker closes the
    /// connection then unless the client re-authenticated (MQTT 5 DISCONNECT 0xA0).
    pub valid_for: Option<Duration>,
}

impl Grant {
    /// A grant of `username` and nothing else.
    pub fn user(username: Option<String>) -> Self {
        Self {
            username,
            ..Self::default()
        }
    }
}

/// One authentication backend's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The client may connect.
    Allow(Grant),
    /// The client is refused; no further backend is asked.
    Deny(DenyReason),
    /// Not this backend's client (no credentials of its kind): ask the next one.
    Pass,
}

/// [`ConnectInfo`] owned, for a backend's future.
#[derive(Clone, Debug, Default)]
pub struct OwnedConnectInfo {
    /// Client identifier.
    pub client_id: String,
    /// User Name from CONNECT.
    pub username: Option<String>,
    /// Password from CONNECT.
    pub password: Option<Vec<u8>>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The listener's name.
    pub listener: String,
    /// Identity from a verified TLS client certificate.
    pub certificate_identity: Option<String>,
    /// The connecting process's user id (Unix socket listeners).
    pub unix_uid: Option<u32>,
}

impl OwnedConnectInfo {
    /// A copy of `info`.
    pub fn of(info: &ConnectInfo<'_>) -> Self {
        Self {
            client_id: info.client_id.to_owned(),
            username: info.username.map(str::to_owned),
            password: info.password.map(<[u8]>::to_vec),
            peer: info.peer,
            listener: info.listener.to_owned(),
            certificate_identity: info.certificate_identity.map(str::to_owned),
            unix_uid: info.unix_uid,
        }
    }

    /// Borrowed again.
    pub fn info(&self) -> ConnectInfo<'_> {
        ConnectInfo {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            peer: self.peer,
            listener: &self.listener,
            certificate_identity: self.certificate_identity.as_deref(),
            unix_uid: self.unix_uid,
        }
    }
}

/// One way of authenticating clients (a password file, tokens, an HTTP service).
pub trait AuthBackend: Send + Sync + fmt::Debug {
    /// The backend's kind as configured (`password_file`, `jwt`, `http`, ...): the label of
    /// its metrics and logs.
    fn kind(&self) -> &'static str;
    /// Checks a connecting client.
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict>;
}

/// Observes the chain's answers, for metrics and logs (the broker's side of counting).
pub trait AuthObserver: Send + Sync + fmt::Debug {
    /// `backend` (its kind) answered `verdict` for `client_id`; `None`: nobody claimed the
    /// client and the anonymous rules answered.
    fn answered(&self, backend: Option<&'static str>, client_id: &str, verdict: &Verdict);
}

/// A listener's authentication: its backends in order, then the anonymous rules.
#[derive(Clone, Debug)]
pub struct AuthChain {
    backends: Arc<[Arc<dyn AuthBackend>]>,
    allow_anonymous: bool,
    observer: Option<Arc<dyn AuthObserver>>,
}

impl AuthChain {
    /// A chain of `backends`; `allow_anonymous`: whether a client no backend claims may
    /// connect (see [`AuthChain::last_word`]).
    pub fn new(backends: Vec<Arc<dyn AuthBackend>>, allow_anonymous: bool) -> Self {
        Self {
            backends: backends.into(),
            allow_anonymous,
            observer: None,
        }
    }

    /// Reports every answer to `observer`.
    pub fn observed(mut self, observer: Arc<dyn AuthObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The backends, in order.
    pub fn backends(&self) -> &[Arc<dyn AuthBackend>] {
        &self.backends
    }

    /// The answer when every backend passed. Without backends, mosquitto's rule: with
    /// anonymous access any client may connect, under the username it gave. With backends,
    /// only a client without a username is anonymous; one with a username that nobody claimed
    /// is refused (0x86), as is an anonymous one where anonymous is not allowed (0x87).
    pub fn last_word(&self, info: &ConnectInfo<'_>) -> Verdict {
        if self.backends.is_empty() {
            return if self.allow_anonymous {
                Verdict::Allow(Grant::user(info.username.map(str::to_owned)))
            } else if info.username.is_some() {
                Verdict::Deny(DenyReason::BadUserNameOrPassword)
            } else {
                Verdict::Deny(DenyReason::NotAuthorized)
            };
        }
        if info.username.is_some() {
            Verdict::Deny(DenyReason::BadUserNameOrPassword)
        } else if self.allow_anonymous {
            Verdict::Allow(Grant::default())
        } else {
            Verdict::Deny(DenyReason::NotAuthorized)
        }
    }

    /// Runs the chain from backend `from` on.
    fn run(&self, info: &ConnectInfo<'_>, from: usize) -> Answer<AuthDecision> {
        for (i, b) in self.backends.iter().enumerate().skip(from) {
            match b.authenticate(info) {
                Answer::Now(Verdict::Pass) => self.observe(Some(b.kind()), info, &Verdict::Pass),
                Answer::Now(v) => {
                    self.observe(Some(b.kind()), info, &v);
                    return Answer::Now(decision(v));
                }
                Answer::Later(fut) => {
                    let chain = self.clone();
                    let owned = OwnedConnectInfo::of(info);
                    let kind = b.kind();
                    return Answer::Later(Box::pin(async move {
                        let v = fut.await;
                        chain.observe(Some(kind), &owned.info(), &v);
                        match v {
                            Verdict::Pass => chain.run(&owned.info(), i + 1).resolve().await,
                            v => decision(v),
                        }
                    }));
                }
            }
        }
        let v = self.last_word(info);
        self.observe(None, info, &v);
        Answer::Now(decision(v))
    }

    fn observe(&self, backend: Option<&'static str>, info: &ConnectInfo<'_>, v: &Verdict) {
        if let Some(o) = &self.observer {
            o.answered(backend, info.client_id, v);
        }
    }
}

fn decision(v: Verdict) -> AuthDecision {
    match v {
        Verdict::Allow(g) => AuthDecision::Allow(g),
        Verdict::Deny(r) => AuthDecision::Deny(r),
        // `last_word` never passes; a backend's pass is handled by the caller.
        Verdict::Pass => AuthDecision::Deny(DenyReason::NotAuthorized),
    }
}

impl Authenticator for AuthChain {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<AuthDecision> {
        self.run(info, 0)
    }
}

/// What a client asks to do, for an [`AclBackend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a filter (without any `$share/{group}/` prefix).
    Subscribe,
    /// Receive a message published to a topic name (asked on every delivery).
    Read,
}

impl Action {
    /// The action's name in configuration, logs and HTTP bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Read => "read",
        }
    }
}

/// [`Client`] owned, for a backend's future.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct OwnedClient {
    /// Client identifier.
    pub client_id: String,
    /// Authenticated username.
    pub username: Option<String>,
}

impl OwnedClient {
    /// A copy of `c`.
    pub fn of(c: &Client<'_>) -> Self {
        Self {
            client_id: c.client_id.to_owned(),
            username: c.username.map(str::to_owned),
        }
    }

    /// Borrowed again.
    pub fn client(&self) -> Client<'_> {
        Client {
            client_id: &self.client_id,
            username: self.username.as_deref(),
        }
    }
}

/// One source of authorization rules.
pub trait AclBackend: Send + Sync + fmt::Debug {
    /// The backend's kind as configured: the label of its metrics.
    fn kind(&self) -> &'static str;
    /// `Some(true)`: allowed; `Some(false)`: refused; `None`: not this backend's question,
    /// ask the next. [`Action::Read`] is asked on every delivery, so it must answer
    /// [`Answer::Now`] (a `Later` there counts as a refusal).
    fn check(&self, client: &Client<'_>, action: Action, topic: &str) -> Answer<Option<bool>>;
    /// As [`Authorizer::generation`]: changes whenever earlier answers may be stale; `None`:
    /// answers must not be reused.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// A listener's authorization: its backends in order, then `no_match` for publish and
/// subscribe. A delivery (read) no backend answers is allowed: the subscription it comes
/// through was authorized by the same chain.
#[derive(Clone, Debug)]
pub struct AclChain {
    backends: Arc<[Arc<dyn AclBackend>]>,
    no_match: bool,
}

impl AclChain {
    /// A chain of `backends`; `no_match`: the answer when all of them pass.
    pub fn new(backends: Vec<Arc<dyn AclBackend>>, no_match: bool) -> Self {
        Self {
            backends: backends.into(),
            no_match,
        }
    }

    fn run(&self, client: &Client<'_>, action: Action, topic: &str, from: usize) -> Answer<bool> {
        for (i, b) in self.backends.iter().enumerate().skip(from) {
            match b.check(client, action, topic) {
                Answer::Now(None) => {}
                Answer::Now(Some(allowed)) => return Answer::Now(allowed),
                Answer::Later(fut) => {
                    let chain = self.clone();
                    let owned = OwnedClient::of(client);
                    let topic = topic.to_owned();
                    return Answer::Later(Box::pin(async move {
                        match fut.await {
                            Some(allowed) => allowed,
                            None => {
                                chain
                                    .run(&owned.client(), action, &topic, i + 1)
                                    .resolve()
                                    .await
                            }
                        }
                    }));
                }
            }
        }
        // A read nobody answered was authorized when the client subscribed (backends such
        // as an HTTP service are asked about subscriptions, not about every delivery).
        Answer::Now(action == Action::Read || self.no_match)
    }
}

impl Authorizer for AclChain {
    fn can_publish(&self, client: &Client<'_>, topic: &str) -> Answer<bool> {
        self.run(client, Action::Publish, topic, 0)
    }
    fn can_subscribe(&self, client: &Client<'_>, filter: &str) -> Answer<bool> {
        self.run(client, Action::Subscribe, filter, 0)
    }
    fn can_read(&self, client: &Client<'_>, topic: &str) -> bool {
        match self.run(client, Action::Read, topic, 0) {
            Answer::Now(allowed) => allowed,
            Answer::Later(_) => false,
        }
    }
    fn generation(&self) -> Option<u64> {
        // The sum of the backends' generations changes whenever one of them does (each only
        // grows); any backend without one makes answers unrepeatable.
        let mut sum = 0u64;
        for b in self.backends.iter() {
            sum = sum.wrapping_add(b.generation()?);
        }
        Some(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Fixed(Verdict, bool, AtomicUsize);

    impl AuthBackend for Fixed {
        fn kind(&self) -> &'static str {
            "fixed"
        }
        fn authenticate(&self, _: &ConnectInfo<'_>) -> Answer<Verdict> {
            self.2.fetch_add(1, Ordering::Relaxed);
            let v = self.0.clone();
            if self.1 {
                Answer::Later(Box::pin(async move { v }))
            } else {
                Answer::Now(v)
            }
        }
    }

    fn fixed(v: Verdict, later: bool) -> Arc<Fixed> {
        Arc::new(Fixed(v, later, AtomicUsize::new(0)))
    }

    fn info<'a>(user: Option<&'a str>, pw: Option<&'a [u8]>) -> ConnectInfo<'a> {
        ConnectInfo {
            client_id: "c",
            username: user,
            password: pw,
            peer: None,
            listener: "test",
            certificate_identity: None,
            unix_uid: None,
        }
    }

    fn block<T: Send + 'static>(a: Answer<T>) -> T {
        // The futures here never wait on anything: one poll finishes them.
        let mut fut = Box::pin(a.resolve());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(t) => t,
            std::task::Poll::Pending => panic!("a test future waited"),
        }
    }

    fn allow(user: &str) -> Verdict {
        Verdict::Allow(Grant::user(Some(user.into())))
    }

    #[test]
    fn the_first_definite_answer_wins_now_or_later() {
        for later in [false, true] {
            let (a, b, c) = (
                fixed(Verdict::Pass, later),
                fixed(allow("bob"), later),
                fixed(Verdict::Deny(DenyReason::NotAuthorized), false),
            );
            let chain = AuthChain::new(vec![a.clone(), b.clone(), c.clone()], false);
            let d = block(chain.authenticate(&info(Some("x"), Some(b"p"))));
            assert_eq!(d, AuthDecision::Allow(Grant::user(Some("bob".into()))));
            assert_eq!(a.2.load(Ordering::Relaxed), 1);
            assert_eq!(b.2.load(Ordering::Relaxed), 1);
            assert_eq!(c.2.load(Ordering::Relaxed), 0, "not asked after an answer");
        }
    }

    #[test]
    fn when_every_backend_passes_the_anonymous_rules_answer() {
        let pass = || -> Vec<Arc<dyn AuthBackend>> { vec![fixed(Verdict::Pass, true)] };
        let open = AuthChain::new(pass(), true);
        assert_eq!(
            block(open.authenticate(&info(None, None))),
            AuthDecision::Allow(Grant::default())
        );
        assert_eq!(
            block(open.authenticate(&info(Some("u"), Some(b"p")))),
            AuthDecision::Deny(DenyReason::BadUserNameOrPassword),
            "a username nobody vouched for is refused even where anonymous is allowed"
        );
        let closed = AuthChain::new(pass(), false);
        assert_eq!(
            block(closed.authenticate(&info(None, None))),
            AuthDecision::Deny(DenyReason::NotAuthorized)
        );
        // No backend at all: mosquitto's behaviour, the username taken as given.
        let none = AuthChain::new(Vec::new(), true);
        assert_eq!(
            block(none.authenticate(&info(Some("u"), None))),
            AuthDecision::Allow(Grant::user(Some("u".into())))
        );
    }

    #[derive(Debug)]
    struct Rule(&'static str, Option<bool>, bool);

    impl AclBackend for Rule {
        fn kind(&self) -> &'static str {
            "rule"
        }
        fn check(&self, _: &Client<'_>, _: Action, topic: &str) -> Answer<Option<bool>> {
            let a = if topic.starts_with(self.0) {
                self.1
            } else {
                None
            };
            if self.2 {
                Answer::Later(Box::pin(async move { a }))
            } else {
                Answer::Now(a)
            }
        }
    }

    #[test]
    fn acl_chain_asks_in_order_and_falls_back_to_no_match() {
        let chain = AclChain::new(
            vec![
                Arc::new(Rule("a/", Some(false), true)),
                Arc::new(Rule("a/", Some(true), false)),
                Arc::new(Rule("b/", Some(true), true)),
            ],
            false,
        );
        let c = Client {
            client_id: "c",
            username: None,
        };
        assert!(
            !block(chain.can_publish(&c, "a/x")),
            "the first answer wins"
        );
        assert!(block(chain.can_publish(&c, "b/x")), "asked after a pass");
        assert!(!block(chain.can_subscribe(&c, "z")), "no match");
        assert!(!chain.can_read(&c, "b/x"), "a later answer cannot read");
        let now_only = AclChain::new(vec![Arc::new(Rule("a/", Some(false), false))], false);
        assert!(!now_only.can_read(&c, "a/x"));
        assert!(
            now_only.can_read(&c, "z"),
            "an unanswered read: authorized at subscribe"
        );
        assert_eq!(chain.generation(), None);
    }
}
