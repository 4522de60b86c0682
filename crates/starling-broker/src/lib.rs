//! Starling's broker core: sessions, the subscription index and routing, retained messages,
//! wills, expiry, limits and `$SYS`, plus the per-connection protocol machine that drives them.
//!
//! No sockets and no clock: the network layer feeds packets and the current time in and takes
//! encoded bytes out, so every path can be driven in memory by tests.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod broker;
pub mod bucket;
pub mod config;
pub mod connection;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod retain;
pub mod router;
pub mod session;
pub mod sys;
pub mod wake;

pub use broker::Broker;
pub use config::{Features, Limits, QueueFullPolicy};
pub use connection::{Close, Connection, ListenerAccess, PeerInfo};
pub use metrics::Metrics;
pub use wake::{Wake, Waker};
