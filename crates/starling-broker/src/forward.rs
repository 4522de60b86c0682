//! Handing a message to another node of a cluster: the [`Forwarder`] seam. On a single node
//! the route table never names another node, and [`NoPeers`] is the forwarder. A forwarder
//! may hand back a [`Replication`] for a message: the publisher's PUBACK/PUBREC waits until
//! it is decided (the node stored the message, or the forwarder gave up on the node).

use std::fmt;
use std::sync::Arc;

use tracing::warn;

use crate::message::Message;
use crate::retain::Replication;

/// Identifies a node of a cluster.
pub type NodeId = u64;

/// Hands messages to other nodes. Called on the publish path, so it must not block: an
/// implementation queues the message for the node (a bounded queue, with what happens when it
/// is full documented by the implementation) and returns.
pub trait Forwarder: Send + Sync + fmt::Debug {
    /// Hands `msg` to `node`, which routes it to its own subscribers and to one of its
    /// members of each shared group in `groups` (full filters; it was picked for those);
    /// what the publisher's acknowledgement must wait for, if anything.
    fn forward(
        &self,
        node: NodeId,
        msg: &Arc<Message>,
        groups: &[Arc<str>],
    ) -> Option<Arc<Replication>>;
}

/// The forwarder of a single node: there is no other node. A route table that names one
/// anyway is misconfigured; the message is not forwarded and a warning is logged.
#[derive(Debug, Default)]
pub struct NoPeers;

impl Forwarder for NoPeers {
    fn forward(
        &self,
        node: NodeId,
        msg: &Arc<Message>,
        _: &[Arc<str>],
    ) -> Option<Arc<Replication>> {
        warn!(node, topic = %msg.topic, "route names another node, but this broker has no peers");
        None
    }
}
