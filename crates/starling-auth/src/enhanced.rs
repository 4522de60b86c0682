//! Enhanced authentication (MQTT 5, spec 4.12): a challenge/response exchange of AUTH packets
//! between CONNECT and CONNACK, and again whenever the client asks to re-authenticate.
//!
//! A method ([`EnhancedAuth`]) is named by the client's Authentication Method property. For
//! each exchange the broker asks the method for a fresh [`AuthExchange`], hands it the
//! Authentication Data of CONNECT (or of the AUTH 0x19 that starts a re-authentication) with
//! [`AuthExchange::start`], and then the data of each AUTH 0x18 from the client with
//! [`AuthExchange::next`], until the exchange answers [`AuthStep::Success`] or
//! [`AuthStep::Fail`]. The broker does the MQTT side: which packet carries each step, the
//! method property on every packet, the bound on the number of steps and on the time, and what
//! a failure closes.

use std::fmt;
use std::net::SocketAddr;

use crate::DenyReason;

/// What an exchange knows about the client when it starts.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeInfo<'a> {
    /// Client identifier (already assigned by the broker if the client sent an empty one).
    pub client_id: &'a str,
    /// The CONNECT User Name; for a re-authentication, the username the connection was
    /// authenticated as (a method should refuse to authenticate anyone else).
    pub username: Option<&'a str>,
    /// True for a re-authentication of a connected client (AUTH 0x19).
    pub reauthentication: bool,
    /// The client's address, when the transport has one.
    pub peer: Option<SocketAddr>,
    /// The listener the client came in on (its name in logs).
    pub listener: &'a str,
}

/// One answer of an exchange.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// More is needed: the broker sends AUTH 0x18 with this Authentication Data (none when
    /// empty) and waits for the client's next AUTH 0x18.
    Continue(Vec<u8>),
    /// The client is authenticated as `username`: CONNACK 0x00 (or AUTH 0x00 for a
    /// re-authentication), with `data` as Authentication Data if there is any.
    Success {
        /// The identity the broker uses from now on (ACLs, logs).
        username: String,
        /// Final data for the client (e.g. SCRAM's server signature).
        data: Option<Vec<u8>>,
        /// Rules for this session alone, as [`crate::Grant::acl`]; replaced by the next
        /// successful re-authentication's.
        acl: Option<std::sync::Arc<crate::AclFile>>,
        /// How long the credentials stay valid, as [`crate::Grant::valid_for`]; a
        /// re-authentication sets it anew (a fresh token extends the connection).
        valid_for: Option<std::time::Duration>,
    },
    /// Refused: CONNACK (or, for a re-authentication, DISCONNECT) 0x86 or 0x87, then close.
    Fail(DenyReason),
}

impl fmt::Debug for AuthStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Authentication data is not for logs.
        match self {
            Self::Continue(d) => write!(f, "Continue({} bytes)", d.len()),
            Self::Success { username, data, .. } => write!(
                f,
                "Success {{ username: {username:?}, data: {} bytes }}",
                data.as_ref().map_or(0, Vec::len)
            ),
            Self::Fail(r) => write!(f, "Fail({r:?})"),
        }
    }
}

/// An enhanced authentication method, shared by every connection of the listeners that offer
/// it.
pub trait EnhancedAuth: Send + Sync + fmt::Debug {
    /// The method's name as clients send it in the Authentication Method property, e.g.
    /// `SCRAM-SHA-256`. Compared exactly.
    fn method(&self) -> &str;
    /// A new exchange for one authentication of one connection.
    fn exchange(&self) -> Box<dyn AuthExchange>;
}

/// The state of one authentication exchange. Its calls are made on the connection's task and
/// must be quick: anything slow by design belongs to the client (as SCRAM's iterations do).
pub trait AuthExchange: Send + Sync + fmt::Debug {
    /// The first step, with the Authentication Data of CONNECT or of AUTH 0x19 (`None` when the
    /// packet had none).
    fn start(&mut self, info: &ExchangeInfo<'_>, data: Option<&[u8]>) -> AuthStep;
    /// Each further step, with the Authentication Data of the client's AUTH 0x18.
    fn next(&mut self, data: Option<&[u8]>) -> AuthStep;
}
