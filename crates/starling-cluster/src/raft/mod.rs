//! The Raft glue: openraft's type configuration for the cluster's state, the on-disk log
//! ([`log::RaftLog`]), the state machine that applies it ([`machine::Machine`]) and their
//! common storage file. What the state *is* belongs to [`crate::state`]; this module only
//! persists, replicates and applies it.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Command, NodeId, Outcome};

pub mod log;
pub mod machine;

/// How a member of the cluster is reached: its inter-node address (`[cluster] bind`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// `host:port` of the node's cluster listener.
    pub addr: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// The cluster's Raft types: commands in, outcomes out, members reached at a [`Peer`].
    pub Types:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = Peer,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft instance of a node.
pub type Raft = openraft::Raft<Types>;
/// A log entry.
pub type Entry = openraft::Entry<Types>;
/// openraft's storage error for this configuration.
pub type StorageError = openraft::StorageError<NodeId>;

/// Encodes a value for the disk or the wire (postcard: compact, and the same bytes for the same
/// value on every node).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(v)
}

/// Decodes what [`encode`] wrote; bytes from a peer or a damaged file give an error.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests;
