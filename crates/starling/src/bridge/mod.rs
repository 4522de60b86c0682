//! Bridges to other brokers (`[[bridge]]`). Each bridge is one task holding two MQTT
//! connections: a local one, in memory, served by the broker's own connection machine like any
//! client's, with a persistent session; and a remote one, over TCP or TLS, made with the client
//! commands' client.
//!
//! The local session is what makes the bridge lossless: a message going out is acknowledged
//! to the local broker only once the remote has acknowledged it, so until then it stays in the
//! session's store (inflight, or queued while the remote is away) and is sent again after a
//! reconnect or a restart. A message coming in is acknowledged to the remote only once the
//! local broker has acknowledged it, that is stored it. At QoS 2 the two flows are chained
//! step by step under mirrored packet ids (`flows.rs`), so that what one side resends the other
//! side's session recognises: exactly once. The local subscriptions use No Local, so what came
//! in over the bridge never goes back out over it; MQTT 5 remotes get No Local too.
//!
//! An operator stops and starts a bridge through its [`Switch`] (the admin API): stopped, the
//! remote connection is closed and not reopened, while the local session keeps queueing.

mod flows;
mod run;
mod topics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

pub use run::run;
pub use topics::Routes;

/// The client id of a bridge's local connection (and of its session).
pub fn local_client_id(name: &str) -> String {
    format!("$bridge/{name}")
}

/// What a bridge has done, for logs, metrics and the admin API, and its on/off switch.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// The bridge's name.
    pub name: String,
    /// Whether an operator lets it connect to the remote.
    pub switch: Switch,
    /// Connected to the remote now.
    pub connected: AtomicBool,
    /// Messages and payload bytes sent to the remote (acknowledged, at QoS 1 and 2).
    pub out_messages: AtomicU64,
    /// Payload bytes of those.
    pub out_bytes: AtomicU64,
    /// Messages received from the remote and published locally.
    pub in_messages: AtomicU64,
    /// Payload bytes of those.
    pub in_bytes: AtomicU64,
    /// Connections to the remote made after the first.
    pub reconnects: AtomicU64,
    /// Messages the remote refused (a reason code of 0x80 or more), or that matched no topic.
    pub dropped: AtomicU64,
    /// Messages delivered by the local broker and not yet acknowledged by the remote.
    pub pending: AtomicU64,
}

impl BridgeStats {
    /// Stats for the bridge `name`.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            ..Self::default()
        })
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// An operator's on/off switch for one bridge (on at start; not stored, so a restart turns it
/// back on). One `watch` value: reading it is a load, and the bridge's task waits on changes.
#[derive(Debug)]
pub struct Switch(watch::Sender<bool>);

impl Default for Switch {
    fn default() -> Self {
        Self(watch::Sender::new(true))
    }
}

impl Switch {
    /// On: the bridge connects to its remote.
    pub fn is_on(&self) -> bool {
        *self.0.borrow()
    }

    /// Turns it on or off; whether that changed anything.
    pub fn set(&self, on: bool) -> bool {
        self.0.send_if_modified(|v| {
            let changed = *v != on;
            *v = on;
            changed
        })
    }

    /// What the bridge's task waits on.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// Waits until `switch` is `on` (now, if it is). A switch whose sender is gone never changes
/// again: then this waits forever, and the caller's other branches decide.
async fn switched(switch: &mut watch::Receiver<bool>, on: bool) {
    if switch.wait_for(|v| *v == on).await.is_err() {
        std::future::pending::<()>().await;
    }
}
