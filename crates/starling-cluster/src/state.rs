//! The cluster's replicated state: what every node agrees on through the Raft log. It owns
//! three invariants, and nothing else may change the state they cover:
//!
//! - **Members**: each node's latest incarnation (a node proposes a higher one every time it
//!   starts, so whatever it said in an older life can be told apart and discarded), and
//!   which incarnations the leader judged down (silent for `down_after_ms`; a new
//!   incarnation, or the node answering again, ends it).
//! - **Client-id ownership**: at most one owner per client id, and each claim gets an epoch
//!   that no other claim of any client id ever gets (the log index of the claim). A release
//!   applies only if its epoch is still the owner's, so a late release from a connection that
//!   was taken over cannot undo the takeover.
//! - **Retained messages**: one per topic, bounded in number and payload size; a publish that
//!   would pass a bound is refused as a whole (never half-applied) and every node says so alike.
//!
//! [`ClusterState::apply`] is a pure function of the state, the command and its log index: no
//! clock (times travel inside the commands), no randomness, no I/O, so every replica that applies
//! the same log reaches the same state. The Raft glue (`raft/`) persists and replicates; this
//! module decides.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Identifies a node of the cluster (`[cluster] node_id`).
pub type NodeId = u64;

/// Bounds on the replicated retained messages, the same on every node (they are part of the
/// state, set when the cluster is formed, so replicas cannot disagree about a refusal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most retained messages kept; a new topic beyond it is refused.
    pub max_retained: u64,
    /// Largest retained payload, in bytes.
    pub max_retained_payload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_retained: 1_000_000,
            max_retained_payload: 256 * 1024,
        }
    }
}

/// Who owns a client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The node the client's session lives on.
    pub node: NodeId,
    /// That node's incarnation when it claimed.
    pub incarnation: u64,
    /// The claim's epoch: the log index of the claim, unique across every client id.
    pub epoch: u64,
}

/// A retained message as the cluster keeps it: what a subscriber needs to be served it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    /// QoS it was published with.
    pub qos: u8,
    /// The payload (never empty: an empty payload clears).
    pub payload: Vec<u8>,
    /// The PUBLISH's beginning as MQTT 5 on the wire (fixed header, topic, properties), which
    /// `payload` completes: how the node that serves it rebuilds the message.
    pub header: Vec<u8>,
    /// When it expires, in milliseconds since the Unix epoch (from the publishing node's clock,
    /// carried in the command), if ever.
    pub expires_at_ms: Option<u64>,
}

/// A change to the replicated state: the payload of a Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node (re)starts with a new incarnation; an older or equal one is refused.
    Incarnate { node: NodeId, incarnation: u64 },
    /// `node` (in `incarnation`) takes `client_id`, whoever owned it before.
    Claim {
        client_id: String,
        node: NodeId,
        incarnation: u64,
    },
    /// The owner under `epoch` lets `client_id` go (its session ended); a no-op if the client
    /// id was claimed again since.
    Release { client_id: String, epoch: u64 },
    /// Sets the retained message of `topic`.
    Retain { topic: String, message: Retained },
    /// Clears the retained message of `topic` (a retained publish with an empty payload).
    ClearRetained { topic: String },
    /// Sets or clears (`None`) the retained messages of several topics, in order, each on
    /// its own (one refused does not refuse the others): the retained publishes a node
    /// gathered while its previous batch was committing.
    RetainBatch {
        changes: Vec<(String, Option<Retained>)>,
    },
    /// Drops every retained message whose expiry is at or before `now_ms` (proposed by the
    /// leader from its clock; every replica drops the same set).
    ExpireRetained { now_ms: u64 },
    /// The leader judged `node` in `incarnation` down (it answered nothing for
    /// `down_after_ms`): every node forgets its filters. Refused for another incarnation.
    NodeDown { node: NodeId, incarnation: u64 },
    /// `node` in `incarnation` answers again: no longer down.
    NodeUp { node: NodeId, incarnation: u64 },
}

/// Why a command changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The incarnation is not newer than the one the node already has.
    #[error("incarnation is not newer than the node's current one")]
    StaleIncarnation,
    /// The claiming node's incarnation is not its current one (a message from an older life,
    /// or from a node that never announced itself).
    #[error("claim from a node incarnation that is not the current one")]
    StaleClaim,
    /// The release's epoch is no longer the owner's.
    #[error("the client id was claimed again since")]
    StaleRelease,
    /// The retained payload is larger than `max_retained_payload`.
    #[error("retained payload larger than the cluster's limit")]
    RetainedTooLarge,
    /// `max_retained` messages are kept and the topic is new.
    #[error("the cluster keeps its maximum number of retained messages")]
    RetainedFull,
}

/// What applying a command did, returned to whoever proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A membership change or retained-message change took effect.
    Done,
    /// The claim took effect: the new owner, and who owned the client id before (whose
    /// connection must be taken over, and whose session state may be handed over).
    Claimed {
        owner: Owner,
        previous: Option<Owner>,
    },
    /// The client id was released.
    Released,
    /// Retained messages that expired were dropped.
    Expired { count: u64 },
    /// What each change of a `RetainBatch` did, in order.
    Batch(Vec<Outcome>),
    /// Nothing changed.
    Refused(Refusal),
}

/// The replicated state. Ordered maps, so that a snapshot of it is the same bytes on every
/// replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    limits: Limits,
    incarnations: BTreeMap<NodeId, u64>,
    owners: BTreeMap<String, Owner>,
    retained: BTreeMap<String, Retained>,
    retained_bytes: u64,
    /// Nodes judged down, in their current incarnation (last, so that the layout before it
    /// is a prefix: see [`ClusterState::from_stored`]).
    down: BTreeSet<NodeId>,
}

/// The state as snapshots kept it before `down` ([`ClusterState::from_stored`]).
#[derive(Deserialize)]
struct StateWithoutDown {
    limits: Limits,
    incarnations: BTreeMap<NodeId, u64>,
    owners: BTreeMap<String, Owner>,
    retained: BTreeMap<String, Retained>,
    retained_bytes: u64,
}

impl ClusterState {
    /// The state from a stored snapshot: the current layout, or the one before the down
    /// marks (nothing down then).
    pub fn from_stored(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes::<ClusterState>(bytes).or_else(|e| {
            let old = postcard::from_bytes::<StateWithoutDown>(bytes).map_err(|_| e)?;
            Ok(ClusterState {
                limits: old.limits,
                incarnations: old.incarnations,
                owners: old.owners,
                retained: old.retained,
                retained_bytes: old.retained_bytes,
                down: BTreeSet::new(),
            })
        })
    }

    /// An empty state with `limits`.
    pub fn new(limits: Limits) -> Self {
        ClusterState {
            limits,
            ..Default::default()
        }
    }

    /// Applies `cmd`, the entry at log `index`. Deterministic: the same state, command and index
    /// give the same outcome and state on every replica.
    pub fn apply(&mut self, index: u64, cmd: Command) -> Outcome {
        match cmd {
            Command::Incarnate { node, incarnation } => {
                if self
                    .incarnations
                    .get(&node)
                    .is_some_and(|&i| incarnation <= i)
                {
                    return Outcome::Refused(Refusal::StaleIncarnation);
                }
                self.incarnations.insert(node, incarnation);
                // A new life is not down.
                self.down.remove(&node);
                Outcome::Done
            }
            Command::NodeDown { node, incarnation } | Command::NodeUp { node, incarnation }
                if self.incarnations.get(&node) != Some(&incarnation) =>
            {
                Outcome::Refused(Refusal::StaleIncarnation)
            }
            Command::NodeDown { node, .. } => {
                self.down.insert(node);
                Outcome::Done
            }
            Command::NodeUp { node, .. } => {
                self.down.remove(&node);
                Outcome::Done
            }
            Command::Claim {
                client_id,
                node,
                incarnation,
            } => {
                if self.incarnations.get(&node) != Some(&incarnation) {
                    return Outcome::Refused(Refusal::StaleClaim);
                }
                let owner = Owner {
                    node,
                    incarnation,
                    epoch: index,
                };
                let previous = self.owners.insert(client_id, owner);
                Outcome::Claimed { owner, previous }
            }
            Command::Release { client_id, epoch } => match self.owners.get(&client_id) {
                Some(o) if o.epoch == epoch => {
                    self.owners.remove(&client_id);
                    Outcome::Released
                }
                _ => Outcome::Refused(Refusal::StaleRelease),
            },
            // An empty payload clears, as a retained PUBLISH with one does (spec 3.3.1.3).
            Command::Retain { topic, message } if message.payload.is_empty() => {
                self.apply(index, Command::ClearRetained { topic })
            }
            Command::Retain { topic, message } => {
                let size = message.payload.len() as u64;
                if size > self.limits.max_retained_payload {
                    return Outcome::Refused(Refusal::RetainedTooLarge);
                }
                let old = self.retained.get(&topic).map(|m| m.payload.len() as u64);
                if old.is_none() && self.retained.len() as u64 >= self.limits.max_retained {
                    return Outcome::Refused(Refusal::RetainedFull);
                }
                self.retained_bytes = self.retained_bytes - old.unwrap_or(0) + size;
                self.retained.insert(topic, message);
                Outcome::Done
            }
            Command::ClearRetained { topic } => {
                if let Some(old) = self.retained.remove(&topic) {
                    self.retained_bytes -= old.payload.len() as u64;
                }
                Outcome::Done
            }
            Command::RetainBatch { changes } => Outcome::Batch(
                changes
                    .into_iter()
                    .map(|(topic, message)| match message {
                        Some(message) => self.apply(index, Command::Retain { topic, message }),
                        None => self.apply(index, Command::ClearRetained { topic }),
                    })
                    .collect(),
            ),
            Command::ExpireRetained { now_ms } => {
                let before = self.retained.len();
                let mut freed = 0;
                self.retained.retain(|_, m| {
                    let keep = m.expires_at_ms.is_none_or(|at| at > now_ms);
                    if !keep {
                        freed += m.payload.len() as u64;
                    }
                    keep
                });
                self.retained_bytes -= freed;
                Outcome::Expired {
                    count: (before - self.retained.len()) as u64,
                }
            }
        }
    }

    /// The owner of `client_id`, if it has one.
    pub fn owner(&self, client_id: &str) -> Option<Owner> {
        self.owners.get(client_id).copied()
    }

    /// Every owned client id.
    pub fn owners(&self) -> impl Iterator<Item = (&str, &Owner)> {
        self.owners.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The current incarnation of `node`, if it has announced one.
    pub fn incarnation(&self, node: NodeId) -> Option<u64> {
        self.incarnations.get(&node).copied()
    }

    /// Whether `node` is judged down (in its current incarnation).
    pub fn is_down(&self, node: NodeId) -> bool {
        self.down.contains(&node)
    }

    /// The nodes judged down.
    pub fn down(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.down.iter().copied()
    }

    /// The retained message of `topic`.
    pub fn retained(&self, topic: &str) -> Option<&Retained> {
        self.retained.get(topic)
    }

    /// Every retained message, ordered by topic.
    pub fn all_retained(&self) -> impl Iterator<Item = (&str, &Retained)> {
        self.retained.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of retained messages and their payload bytes.
    pub fn retained_size(&self) -> (u64, u64) {
        (self.retained.len() as u64, self.retained_bytes)
    }

    /// The topics of the retained messages an `ExpireRetained { now_ms }` would drop.
    pub fn expiring(&self, now_ms: u64) -> Vec<String> {
        self.retained
            .iter()
            .filter(|(_, m)| m.expires_at_ms.is_some_and(|at| at <= now_ms))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The limits the state was formed with.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

#[cfg(test)]
pub(crate) mod tests;
