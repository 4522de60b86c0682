//! Starling's cluster: several nodes acting as one broker.
//!
//! What the nodes must agree on (members and their incarnations, which node owns each client
//! id, the retained messages) is one replicated state machine ([`state`]) run under openraft
//! ([`raft`]): its log is on disk, its decisions are linearizable, and a node that cannot reach
//! a majority cannot change it. Nodes talk over [`net`]: a gRPC service (HTTP/2) whose
//! messages are versioned protobuf ([`wire`]), carried by whatever byte stream the caller dials
//! (TCP, with TLS if configured, in production; the simulated network in the deterministic
//! tests).

// openraft's traits fix the error type (`StorageError`, over 200 bytes); the helpers that feed
// them return it as it is rather than box it only to unbox it at every trait method.
#![allow(clippy::result_large_err)]

pub mod contact;
pub mod feed;
pub mod forward;
pub mod members;
pub mod net;
pub mod node;
pub mod raft;
pub mod routes;
pub mod state;
pub mod wire;

pub use node::{ClusterNode, NodeConfig, ProposeError, StartError, Timing};
pub use raft::machine::Observer;
pub use state::{ClusterState, Command, Limits, NodeId, Outcome, Owner, Refusal, Retained};
