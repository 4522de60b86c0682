//! Starling's broker core: sessions, the subscription index and routing, retained messages,
//! wills, expiry, limits and `$SYS`, plus the per-connection protocol machine that drives them.
//!
//! Sans-IO: no sockets, no threads, no async runtime and no clock reads. The I/O layer feeds
//! bytes, packets and the current time in, takes encoded bytes and deadlines out, and is woken
//! through [`Wake`]; so every path can be driven in memory, on a simulated clock, by tests.
//!
//! The broker runs on four seams ([`Seams`]): [`Registry`] (who owns a client id),
//! [`RouteTable`] (filter to subscribers, local and remote), [`RetainStore`] and [`Forwarder`]
//! (a message for another node); a single node uses the local implementations.

pub mod bans;
pub mod broker;
pub mod bucket;
pub mod config;
pub mod connection;
mod few;
pub mod forward;
pub mod hook;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod retain;
pub mod router;
pub mod session;
pub mod sys;
pub mod wake;

pub use broker::{Broker, Ownership, Registry, Seams};
pub use config::{Features, Limits, QueueFullPolicy, QueuePriority, QueueScope};
pub use connection::{CheckAnswer, Close, Connection, ListenerAccess, PeerInfo};
pub use forward::{Forwarder, NodeId};
pub use hook::{Hook, Hooks};
pub use metrics::Metrics;
pub use retain::RetainStore;
pub use router::RouteTable;
pub use wake::{Wake, Waker};
