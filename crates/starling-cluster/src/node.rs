//! One node of the cluster: its Raft instance over the on-disk log, its incarnation, and the
//! one way the rest of the broker changes the replicated state ([`ClusterNode::propose`]),
//! which commits through the leader wherever it is.
//!
//! A node's incarnation is one more than its last one (kept in the storage file), written
//! before Raft starts; the node announces it through the log ([`ClusterNode::announce`]) and
//! claims client ids under it, so a claim made in an earlier life of the node cannot be
//! mistaken for one of this life.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::contact::Contact;
use crate::members::{Change, ChangeReply};
use crate::net::rpc::Kind;
use crate::net::{CallError, Dial, Link, Peers, ProposeReply, propose_local};
use crate::raft::log::{RaftLog, get_meta, open, put_meta};
use crate::raft::machine::{Machine, Shared};
use crate::raft::{Peer, Raft, StorageError};
use crate::state::{Command, Limits, NodeId, Outcome};

/// Most bytes of retained payloads in one log entry (a `RetainBatch`, or one message);
/// `Limits::max_retained_payload` is at most this.
pub const MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// Most entries in one AppendEntries request: with entries of at most [`MAX_ENTRY_BYTES`]
/// (plus their topics and headers), a request stays well within the 16 MiB message bound.
pub const MAX_ENTRIES_PER_APPEND: u64 = 12;

/// Streams a follower forwards proposals to the leader on, each carrying one at a time.
pub const LINKS_TO_LEADER: usize = 8;

/// Between attempts to propose while no leader can be reached.
pub const LEADER_RETRY: Duration = Duration::from_millis(50);

/// Raft's timing, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Between the leader's heartbeats.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a time drawn from this range stands for election.
    pub election_min_ms: u64,
    /// See `election_min_ms`.
    pub election_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 250,
            election_min_ms: 1_000,
            election_max_ms: 2_000,
        }
    }
}

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster.
    pub id: NodeId,
    /// Where its storage file lives.
    pub data_dir: PathBuf,
    /// The voters a new cluster starts with (id and address, this node among them). Only the
    /// lowest id initializes the cluster, and only if it has never been initialized.
    pub initial_members: BTreeMap<NodeId, Peer>,
    /// Bounds of the replicated retained messages (taken when the state is first created).
    pub limits: Limits,
    /// Raft's timing.
    pub timing: Timing,
    /// How long a proposal may take before it is given up (it may still commit later).
    pub propose_timeout: Duration,
    /// Log entries kept after a snapshot is taken; a snapshot is taken every this many
    /// entries too.
    pub snapshot_every: u64,
    /// Where applied claims are told (see [`crate::feed`]), if anywhere.
    pub feed: Option<crate::feed::Sender>,
    /// Who is told of every change to the retained messages, if anyone.
    pub observer: Option<Arc<dyn crate::raft::machine::Observer>>,
}

impl NodeConfig {
    /// A configuration with the defaults for everything but the id, directory and members.
    pub fn new(id: NodeId, data_dir: PathBuf, initial_members: BTreeMap<NodeId, Peer>) -> Self {
        NodeConfig {
            id,
            data_dir,
            initial_members,
            limits: Limits::default(),
            timing: Timing::default(),
            propose_timeout: Duration::from_secs(5),
            snapshot_every: 10_000,
            feed: None,
            observer: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its storage file could not be opened or read.
    #[error("cluster storage: {0}")]
    Storage(#[from] StorageError),
    /// Raft's configuration is invalid.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// Raft could not start or initialize.
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a proposal was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known (an election is under way, or this node is cut off from a majority).
    #[error("no leader")]
    NoLeader,
    /// The leader could not be reached.
    #[error("leader unreachable: {0}")]
    Unreachable(#[from] CallError),
    /// It was not committed in time.
    #[error("not committed within {0:?}")]
    Timeout(Duration),
    /// Raft refused it.
    #[error("{0}")]
    Failed(String),
}

/// A stream to the leader (which node it reaches), once opened.
type ToLeader<D> = Option<(NodeId, Link<D>)>;

/// A running node.
pub struct ClusterNode<D: Dial> {
    id: NodeId,
    incarnation: u64,
    raft: Raft,
    state: Shared,
    dial: D,
    contact: Arc<Contact>,
    propose_timeout: Duration,
    /// The streams to the leader that proposals are forwarded on, one proposal at a time on
    /// each: up to [`LINKS_TO_LEADER`] in flight (the leader answers each stream in turn and
    /// commits what comes on several together).
    to_leader: Vec<Mutex<ToLeader<D>>>,
    /// Which of `to_leader` a proposal that finds them all busy waits for.
    next_link: std::sync::atomic::AtomicUsize,
}

impl<D: Dial> std::fmt::Debug for ClusterNode<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl<D: Dial> ClusterNode<D> {
    /// Opens the node's storage, takes the next incarnation and starts Raft. Peers reach it
    /// only once the caller serves [`crate::net::serve`] on its listener with [`Self::raft`].
    pub async fn start(cfg: NodeConfig, dial: D) -> Result<Arc<Self>, StartError> {
        let db = open(&cfg.data_dir)?;
        let incarnation = get_meta::<u64>(&db, "incarnation")?.unwrap_or(0) + 1;
        put_meta(&db, "incarnation", &incarnation)?;
        let config = openraft::Config {
            cluster_name: "starling".into(),
            heartbeat_interval: cfg.timing.heartbeat_ms,
            election_timeout_min: cfg.timing.election_min_ms,
            election_timeout_max: cfg.timing.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.snapshot_every,
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            // Entries per AppendEntries: with a retained batch at most `MAX_ENTRY_BYTES`,
            // a request stays within the 16 MiB message bound.
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let mut machine = Machine::open(db.clone(), cfg.limits)?;
        if let Some(feed) = cfg.feed.clone() {
            machine = machine.with_feed(feed);
        }
        if let Some(observer) = cfg.observer.clone() {
            machine = machine.with_observer(observer);
        }
        let state = machine.shared();
        let contact = Arc::new(Contact::default());
        let raft = Raft::new(
            cfg.id,
            config,
            Peers::new(dial.clone(), contact.clone()),
            RaftLog::new(db),
            machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let lowest = cfg.initial_members.keys().next().copied();
        if lowest == Some(cfg.id)
            && !raft
                .is_initialized()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?
        {
            info!(node = cfg.id, members = ?cfg.initial_members.keys(), "initializing the cluster");
            raft.initialize(cfg.initial_members.clone())
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        info!(node = cfg.id, incarnation, "cluster node started");
        Ok(Arc::new(ClusterNode {
            id: cfg.id,
            incarnation,
            raft,
            state,
            dial,
            contact,
            propose_timeout: cfg.propose_timeout,
            to_leader: (0..LINKS_TO_LEADER).map(|_| Mutex::new(None)).collect(),
            next_link: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The Raft instance (for serving peers, metrics and membership changes).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// How it reaches its peers.
    pub fn dial(&self) -> &D {
        &self.dial
    }

    /// When each peer last answered this node (every link of the node records it).
    pub fn contact(&self) -> &Arc<Contact> {
        &self.contact
    }

    /// Whether this node has heard, within `lease`, from enough voters to be on the
    /// majority's side (see [`crate::contact`]).
    pub fn with_majority(&self, lease: Duration) -> bool {
        let voters: Vec<NodeId> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        // Not initialized yet (no membership known): judged once it is.
        voters.is_empty() || self.contact.with_majority(self.id, &voters, lease)
    }

    /// The replicated state as this node has applied it.
    pub fn state(&self) -> &Shared {
        &self.state
    }

    /// Commits `cmd` and returns what applying it did: through the local instance if it
    /// leads, else forwarded to the leader. While there is no leader, or the one known cannot
    /// be reached (it died and an election is under way), it tries again every
    /// [`LEADER_RETRY`], within the propose timeout; a request that may have reached the
    /// leader is not sent twice.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let ttl = self.propose_timeout;
        let attempts = async {
            loop {
                let result = match propose_local(&self.raft, cmd.clone()).await {
                    ProposeReply::Committed(o) => Ok(o),
                    ProposeReply::Failed(e) => Err(ProposeError::Failed(e)),
                    ProposeReply::NotLeader(None) => Err(ProposeError::NoLeader),
                    ProposeReply::NotLeader(Some((leader, peer))) => {
                        self.forward(leader, peer, &cmd, ttl).await
                    }
                };
                match result {
                    Err(ProposeError::NoLeader)
                    | Err(ProposeError::Unreachable(CallError::Unreachable { .. })) => {
                        tokio::time::sleep(LEADER_RETRY).await;
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(ttl, attempts)
            .await
            .unwrap_or(Err(ProposeError::Timeout(ttl)))
    }

    async fn forward(
        &self,
        leader: NodeId,
        peer: Peer,
        cmd: &Command,
        ttl: Duration,
    ) -> Result<Outcome, ProposeError> {
        // A free stream if there is one; else wait for one, in turn.
        let free = self.to_leader.iter().find_map(|m| m.try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => {
                let n = self
                    .next_link
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(m) = self.to_leader.get(n % self.to_leader.len()) else {
                    return Err(ProposeError::NoLeader);
                };
                m.lock().await
            }
        };
        if slot.as_ref().is_none_or(|(id, _)| *id != leader) {
            let link = Link::new(self.dial.clone(), leader, peer.addr);
            *slot = Some((leader, link.with_contact(self.contact.clone())));
        }
        let Some((_, link)) = slot.as_mut() else {
            return Err(ProposeError::NoLeader);
        };
        match link
            .call::<Command, ProposeReply>(Kind::Propose, cmd, ttl)
            .await?
        {
            ProposeReply::Committed(o) => Ok(o),
            ProposeReply::NotLeader(_) => Err(ProposeError::NoLeader),
            ProposeReply::Failed(e) => Err(ProposeError::Failed(e)),
        }
    }

    /// Changes the members (see [`crate::members`]): on this node if it leads, else on the
    /// leader, which answers once the change is committed (adding a voter waits for it to
    /// catch up with the log, at most [`crate::members::CATCH_UP`]).
    pub async fn change_members(&self, change: Change) -> Result<(), ProposeError> {
        let ttl = crate::members::CATCH_UP + self.propose_timeout;
        let mut leader = match crate::members::change_local(&self.raft, change.clone()).await {
            ChangeReply::Done => return Ok(()),
            ChangeReply::Failed(e) => return Err(ProposeError::Failed(e)),
            ChangeReply::NotLeader(l) => l,
        };
        // The leader may change while the request is under way: asked again, once.
        for _ in 0..2 {
            let Some((id, peer)) = leader else {
                return Err(ProposeError::NoLeader);
            };
            let mut link = Link::new(self.dial.clone(), id, peer.addr);
            match link
                .call::<Change, ChangeReply>(Kind::Members, &change, ttl)
                .await?
            {
                ChangeReply::Done => {
                    self.applied(&change).await;
                    return Ok(());
                }
                ChangeReply::Failed(e) => return Err(ProposeError::Failed(e)),
                ChangeReply::NotLeader(l) => leader = l,
            }
        }
        Err(ProposeError::NoLeader)
    }

    /// Waits (at most the propose timeout) until this node has applied a change the leader
    /// committed, so that what it answers next shows it.
    async fn applied(&self, change: &Change) {
        let shows = |m: &openraft::RaftMetrics<NodeId, crate::raft::Peer>| {
            let membership = m.membership_config.membership();
            match change {
                Change::Add { id, voter, .. } => {
                    membership.get_node(id).is_some()
                        && (!voter || membership.voter_ids().any(|v| v == *id))
                }
                Change::Remove { id } => membership.get_node(id).is_none(),
            }
        };
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(self.propose_timeout, metrics.wait_for(|m| shows(m))).await;
    }

    /// Announces this node's incarnation through the log, retrying every `retry` until it is
    /// committed (or refused: a newer incarnation of this node is already known, which means
    /// another process runs with this node's id). Until then the node's claims are refused.
    pub async fn announce(&self, retry: Duration) -> Outcome {
        loop {
            let cmd = Command::Incarnate {
                node: self.id,
                incarnation: self.incarnation,
            };
            match self.propose(cmd).await {
                Ok(outcome) => return outcome,
                Err(e) => debug!(node = self.id, error = %e, "incarnation not announced yet"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Whether this node's incarnation is the current one in the state it has applied.
    pub fn announced(&self) -> bool {
        self.state.read().incarnation(self.id) == Some(self.incarnation)
    }

    /// Stops Raft (the storage file is closed when the last handle goes).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            debug!(error = %e, "raft shutdown");
        }
    }
}
