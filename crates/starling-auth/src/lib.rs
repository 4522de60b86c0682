//! Authentication and authorization for Starling.
//!
//! The broker asks two questions, each behind a trait so that other sources (an HTTP service,
//! JWTs, plugins) can answer them without touching the broker core; [`chain`] orders several
//! such sources per listener:
//!
//! - [`Authenticator`]: may this client connect, and under which username? Asked once per
//!   CONNECT with the client id, the credentials, the peer address, the listener and the
//!   identity of the TLS client certificate, if any. A CONNECT that names an MQTT 5
//!   Authentication Method is answered instead by that [`EnhancedAuth`] method, in an exchange
//!   of AUTH packets ([`enhanced`]); [`scram`] is SCRAM-SHA-256 against the password file.
//! - [`Authorizer`]: may this client publish to a topic, subscribe to a filter, and receive a
//!   message published on a topic? Asked on every PUBLISH, for every filter of a SUBSCRIBE and
//!   for every message at the moment it is delivered.
//!
//! The implementations here read the files mosquitto operators already have:
//!
//! - [`password`]: mosquitto's password file (`user:$7$…` PBKDF2-SHA512, the older `$6$`, and
//!   `$argon2id$…`, which is what Starling writes, and Starling's `$scram-sha-256$…`),
//!   compared in constant time.
//! - [`acl`]: mosquitto's ACL file (`user`, `topic [read|write|readwrite|deny]`, `pattern`
//!   with `%c` and `%u`).
//! - [`cert`]: the username taken from a client certificate (its CN or whole subject).
//! - [`file`]: the two files as an [`Authenticator`] and an [`Authorizer`] that reload on
//!   demand (SIGHUP), keeping the old contents when the new file is invalid.
//!
//! Files are parsed strictly: a missing, empty or malformed password file, and a missing or
//! malformed ACL file, is an error naming the file and the line, never a silent allow-all.

pub mod acl;
pub mod cert;
pub mod chain;
pub mod enhanced;
mod error;
pub mod file;
pub mod hashing;
pub mod jwt;
pub mod password;
pub mod scram;

use std::fmt;
use std::net::SocketAddr;

pub use acl::AclFile;
pub use chain::{
    AclBackend, AclChain, Action, Answer, AuthBackend, AuthChain, AuthObserver, Grant, OwnedClient,
    OwnedConnectInfo, Pending, Verdict,
};
pub use enhanced::{AuthExchange, AuthStep, EnhancedAuth, ExchangeInfo};
pub use error::{AuthError, ParseError};
pub use file::{AclAuthorizer, CertificateBackend, PasswordAuthenticator, StandardAuthenticator};
pub use hashing::HashPool;
pub use password::PasswordFile;
pub use scram::ScramSha256;

/// What an [`Authenticator`] knows about a connecting client.
#[derive(Clone, Copy, Debug)]
pub struct ConnectInfo<'a> {
    /// Client identifier (already assigned by the broker if the client sent an empty one).
    pub client_id: &'a str,
    /// User Name from CONNECT.
    pub username: Option<&'a str>,
    /// Password from CONNECT.
    pub password: Option<&'a [u8]>,
    /// The client's address, when the transport has one.
    pub peer: Option<SocketAddr>,
    /// The listener the client came in on (its name in logs, e.g. `tls 0.0.0.0:8883`).
    pub listener: &'a str,
    /// Identity from a verified TLS client certificate (CN or subject, as the listener says).
    pub certificate_identity: Option<&'a str>,
    /// On a Unix socket listener, the user id of the connecting process (from the socket's
    /// peer credentials, which the client cannot choose).
    pub unix_uid: Option<u32>,
}

/// Why a client may not connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// Unknown user or wrong password: v5 CONNACK 0x86, 3.1.1 return code 4.
    BadUserNameOrPassword,
    /// Anonymous where anonymous is not allowed, or no usable identity: v5 CONNACK 0x87,
    /// 3.1.1 return code 5.
    NotAuthorized,
    /// The check could not be made now (the password hashing queue is full): v5 CONNACK
    /// 0x89 Server busy, 3.1.1 return code 3 (Server unavailable). The client may try again.
    Busy,
}

/// An [`Authenticator`]'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// The client may connect, with what the [`Grant`] says: the identity the broker uses
    /// from now on (the CONNECT User Name, the certificate identity, a token's subject, or
    /// `None` for an anonymous client), rules for its session, how long it stays valid.
    Allow(Grant),
    /// The client is refused.
    Deny(DenyReason),
}

/// Decides whether a client may connect. Called once per CONNECT on the connection's task;
/// an answer that needs I/O, or slow work such as a password hash, comes [`Answer::Later`]
/// (hashes run on the [`HashPool`]), so that the connection's thread keeps serving others.
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Checks a connecting client.
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<AuthDecision>;
}

/// The client an [`Authorizer`] decides for.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// Authenticated username; `None` for anonymous clients.
    pub username: Option<&'a str>,
}

/// Decides what a connected client may do. Called on the hot path (every publish and every
/// delivery), so implementations must be cheap and must not block: an answer that needs I/O
/// comes [`Answer::Later`] (publish and subscribe only; the connection holds the packet until
/// it comes).
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// May `client` publish to `topic` (a topic name, no wildcards)?
    fn can_publish(&self, client: &Client<'_>, topic: &str) -> Answer<bool>;
    /// May `client` subscribe to `filter`? For a shared subscription this is the filter
    /// without its `$share/{group}/` prefix.
    fn can_subscribe(&self, client: &Client<'_>, filter: &str) -> Answer<bool>;
    /// May `client` receive a message published to `topic`? Checked when each message,
    /// retained ones included, is delivered, so revoking read access stops delivery at once.
    fn can_read(&self, client: &Client<'_>, topic: &str) -> bool;
    /// A value that changes whenever this authorizer's answers may change (its rules were
    /// reloaded, say). While it stays the same, a connection may reuse the answer it got for
    /// the same client, question and topic instead of asking again. `None`, the default:
    /// answers must not be reused. Values are compared only with earlier values of the same
    /// authorizer: a wrapper that swaps inner authorizers must change its own value on a swap.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// Allows everything: the broker's behaviour when no authorizer is configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn can_publish(&self, _: &Client<'_>, _: &str) -> Answer<bool> {
        Answer::Now(true)
    }
    fn can_subscribe(&self, _: &Client<'_>, _: &str) -> Answer<bool> {
        Answer::Now(true)
    }
    fn can_read(&self, _: &Client<'_>, _: &str) -> bool {
        true
    }
}
