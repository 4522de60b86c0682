//! How nodes reach each other. [`Dial`] opens a byte stream to a peer's address (TCP in
//! production; the simulated network in tests), [`frame`] cuts the stream into versioned
//! frames carrying protobuf messages ([`crate::wire`]), [`Peers`] is openraft's view of the network (one [`Link`] per peer, one request in
//! flight on it, each bounded by openraft's deadline), and [`serve`] answers a peer's
//! requests on an accepted stream. A peer's input is decoded, never trusted: a frame that does
//! not decode closes the stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::contact::Contact;
use crate::raft::{Peer, Raft, Types};
use crate::routes::{Told, UpdateReply};
use crate::state::{Command, NodeId, Outcome};
use crate::wire::Wire;

pub mod frame;

use frame::Kind;

/// Opens streams to peers.
pub trait Dial: Clone + Send + Sync + fmt::Debug + 'static {
    /// The stream it opens.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static;
    /// Connects to `addr` (`host:port`).
    fn dial(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP, with Nagle's delay off (every frame is a whole request or reply). With a
/// source address, streams leave from it (the node's inter-node address), so that a peer
/// sees each node at one address whatever route the system picks.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpDial {
    source: Option<IpAddr>,
}

impl TcpDial {
    /// Streams leave from `ip` (none chosen if it is unspecified: `0.0.0.0`, `::`).
    pub fn from_source(ip: IpAddr) -> Self {
        TcpDial {
            source: (!ip.is_unspecified()).then_some(ip),
        }
    }
}

impl Dial for TcpDial {
    type Stream = tokio::net::TcpStream;

    async fn dial(&self, addr: &str) -> io::Result<Self::Stream> {
        let s = match self.source {
            None => tokio::net::TcpStream::connect(addr).await?,
            Some(ip) => {
                let mut last = io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("{addr} has no address of the family of {ip}"),
                );
                let mut connected = None;
                for to in tokio::net::lookup_host(addr).await? {
                    if to.is_ipv4() != ip.is_ipv4() {
                        continue;
                    }
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    match socket.connect(to).await {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                connected.ok_or(last)?
            }
        };
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// The answer to a forwarded proposal.
#[derive(Debug, PartialEq, Eq)]
pub enum ProposeReply {
    /// Committed and applied: what it did.
    Committed(Outcome),
    /// The receiver is not the leader; the leader it knows of, if any.
    NotLeader(Option<(NodeId, Peer)>),
    /// It could not be committed (no quorum in time, shutting down).
    Failed(String),
}

/// Messages a node hands a peer for the peer's own subscribers, each an MQTT 5 PUBLISH as
/// encoded on the wire (the codec that reads clients' packets reads these too), numbered so
/// that a batch sent again is taken once (the protobuf message itself: see [`crate::wire`]).
pub use crate::wire::pb::Forward;
/// One forwarded message, with the shared groups it was picked for and its cluster id (see
/// [`Handover`]; 0: none).
pub use crate::wire::pb::Forwarded;
/// A node that claimed a client id asks the node that owned it before for the session
/// (docs/cluster.md, "A client moving between nodes"). The asked node answers once it has
/// applied the claim and the session's connection there has closed.
pub use crate::wire::pb::Handover;

/// The answer to a [`Handover`].
#[derive(Debug, PartialEq, Eq)]
pub enum HandoverReply {
    /// The session, as store records (encoded by the store's record format).
    Session {
        /// The session record.
        record: Vec<u8>,
        /// Its messages, numbered, each a message record.
        messages: Vec<(u64, Vec<u8>)>,
        /// Inbound QoS 2 ids awaiting PUBREL.
        awaiting: Vec<u16>,
        /// Each message's cluster id (0: none), in the order of `messages`: the asker takes
        /// a message that already reached the session on its side only once.
        ids: Vec<u64>,
        /// Messages left out for the frame's bound (counted and logged by the sender).
        left_out: u64,
        /// More of the session's queue stays with the sender for the next request (with
        /// `finish`): a queue larger than a frame comes in several answers.
        more: bool,
    },
    /// There is no such session (nothing to hand over, or not resumed: it ended).
    Absent,
    /// The claim has not been applied on the asked node in time, or its connection did not
    /// close: nothing was taken.
    NotYet,
}

/// The answer to a [`Handover`], when the node has it.
pub type HandoverAnswer = std::pin::Pin<Box<dyn Future<Output = HandoverReply> + Send>>;

/// How many messages of a forwarded batch a node took, once it has stored them (the reply
/// waits for it).
pub type Confirmed = std::pin::Pin<Box<dyn Future<Output = usize> + Send>>;

/// What a node does with what its peers send beside Raft: their filters and the messages
/// they forward. Called on the stream's task; must not block for long.
pub trait Inbound: Send + Sync + 'static {
    /// A peer's filters changed (or did not: a keepalive), and the members it hears.
    fn routes(&self, told: Told) -> UpdateReply;
    /// A peer forwards messages: how many were taken (the rest did not decode), once they
    /// are stored.
    fn forward(&self, batch: Forward) -> Confirmed;
    /// A peer that claimed a client id asks for its session.
    fn handover(&self, request: Handover) -> HandoverAnswer;
}

/// openraft's network: a [`Link`] per peer.
#[derive(Clone, Debug)]
pub struct Peers<D> {
    dial: D,
    contact: Arc<Contact>,
}

impl<D: Dial> Peers<D> {
    /// Peers reached through `dial`; the replies are recorded in `contact`.
    pub fn new(dial: D, contact: Arc<Contact>) -> Self {
        Peers { dial, contact }
    }
}

impl<D: Dial> RaftNetworkFactory<Types> for Peers<D> {
    type Network = Link<D>;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Link<D> {
        Link::new(self.dial.clone(), target, node.addr.clone()).with_contact(self.contact.clone())
    }
}

/// One stream to one peer, opened when first needed and again after it fails; one request in
/// flight at a time (openraft sends to a peer in order).
pub struct Link<D: Dial> {
    dial: D,
    target: NodeId,
    addr: String,
    stream: Option<D::Stream>,
    buf: Vec<u8>,
    /// Where a reply from the peer is recorded, if anywhere.
    contact: Option<Arc<Contact>>,
    /// A request was sent on `stream` and its reply not read yet: set while a call is under
    /// way, so a call that was cancelled midway (its future dropped) leaves it set, and the
    /// next call opens a new stream instead of reading the old reply as its own.
    exchanging: bool,
}

impl<D: Dial> fmt::Debug for Link<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target)
            .field("addr", &self.addr)
            .field("connected", &self.stream.is_some())
            .finish()
    }
}

/// Why a call on a [`Link`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be connected to.
    #[error("cannot connect to {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    /// The stream failed, or the peer's reply did not come in time or did not decode.
    #[error("talking to {addr}: {reason}")]
    Broken { addr: String, reason: String },
}

impl<D: Dial> Link<D> {
    /// A link to node `target` at `addr`.
    pub fn new(dial: D, target: NodeId, addr: String) -> Self {
        Link {
            dial,
            target,
            addr,
            stream: None,
            buf: Vec::new(),
            contact: None,
            exchanging: false,
        }
    }

    /// Records every reply from the peer in `contact`.
    pub fn with_contact(mut self, contact: Arc<Contact>) -> Self {
        self.contact = Some(contact);
        self
    }

    /// Sends `req` as a `kind` frame and decodes the reply, within `ttl`. On any failure the
    /// stream is dropped (a late reply must not be read as the next request's).
    pub async fn call<Req: Wire, Resp: Wire>(
        &mut self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let body = req.to_wire();
        // A stream the peer closed while it was idle (the peer restarted) is opened again
        // before anything is sent on it, so the request is not lost in a dead socket.
        if self.exchanging || self.stream.as_mut().is_some_and(closed_by_peer) {
            self.stream = None;
            self.exchanging = false;
        }
        if self.stream.is_none() {
            let s = tokio::time::timeout(ttl, self.dial.dial(&self.addr))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                })
                .map_err(|source| CallError::Unreachable {
                    addr: self.addr.clone(),
                    source,
                })?;
            self.stream = Some(s);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(self.broken("no stream".into()));
        };
        let buf = &mut self.buf;
        self.exchanging = true;
        let exchange = async {
            frame::write(stream, kind, &body)
                .await
                .map_err(|e| e.to_string())?;
            match frame::read(stream, buf).await {
                Ok(Kind::Reply) => Ok(()),
                Ok(other) => Err(format!("expected a reply, got {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no reply within {ttl:?}")),
        };
        self.exchanging = false;
        let decoded = result.and_then(|()| Resp::from_wire(&self.buf).map_err(|e| e.to_string()));
        if decoded.is_ok()
            && let Some(c) = &self.contact
        {
            c.heard(self.target);
        }
        decoded.map_err(|reason| {
            self.stream = None;
            self.broken(reason)
        })
    }

    fn broken(&self, reason: String) -> CallError {
        CallError::Broken {
            addr: self.addr.clone(),
            reason,
        }
    }

    async fn raft_call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Peer, E>>
    where
        Req: Wire,
        Result<Resp, E>: Wire,
        E: std::error::Error,
    {
        match self
            .call::<Req, Result<Resp, E>>(kind, req, option.hard_ttl())
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e @ CallError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

/// Whether an idle stream was closed by the peer (or sent what nobody asked for): a read
/// that is ready at once. A live idle stream has nothing to read.
fn closed_by_peer<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    let mut read = std::pin::pin!(stream.read(&mut byte));
    matches!(
        read.as_mut().poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(_)
    )
}

impl<D: Dial> RaftNetwork<Types> for Link<D> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Types>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.raft_call(Kind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Types>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.raft_call(Kind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.raft_call(Kind::Vote, &rpc, &option).await
    }
}

/// Commits `cmd` through the local Raft instance if it leads; otherwise says who does.
pub async fn propose_local(raft: &Raft, cmd: Command) -> ProposeReply {
    use openraft::error::ClientWriteError;
    match raft.client_write(cmd).await {
        Ok(r) => ProposeReply::Committed(r.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            ProposeReply::NotLeader(f.leader_id.zip(f.leader_node))
        }
        Err(e) => ProposeReply::Failed(e.to_string()),
    }
}

/// Answers a peer's requests on `stream` until it closes or sends what does not decode:
/// Raft's through `raft`, routes and forwarded messages through `inbound` (without one, such
/// a request closes the stream).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    raft: Raft,
    inbound: Option<std::sync::Arc<dyn Inbound>>,
) {
    let mut body = Vec::new();
    loop {
        let kind = match frame::read(&mut stream, &mut body).await {
            Ok(k) => k,
            Err(e) => {
                debug!(error = %e, "cluster peer stream closed");
                return;
            }
        };
        let reply = match kind {
            Kind::AppendEntries => match AppendEntriesRequest::<Types>::from_wire(&body) {
                Ok(req) => Ok(raft.append_entries(req).await.to_wire()),
                Err(e) => Err(e),
            },
            Kind::Vote => match VoteRequest::<NodeId>::from_wire(&body) {
                Ok(req) => Ok(raft.vote(req).await.to_wire()),
                Err(e) => Err(e),
            },
            Kind::InstallSnapshot => match InstallSnapshotRequest::<Types>::from_wire(&body) {
                Ok(req) => Ok(raft.install_snapshot(req).await.to_wire()),
                Err(e) => Err(e),
            },
            Kind::Propose => match Command::from_wire(&body) {
                Ok(cmd) => Ok(propose_local(&raft, cmd).await.to_wire()),
                Err(e) => Err(e),
            },
            Kind::Members => match crate::members::Change::from_wire(&body) {
                Ok(change) => Ok(crate::members::change_local(&raft, change).await.to_wire()),
                Err(e) => Err(e),
            },
            Kind::Routes | Kind::Forward | Kind::Handover if inbound.is_none() => {
                debug!(
                    ?kind,
                    "cluster peer sent what this node does not take; closing"
                );
                return;
            }
            Kind::Routes => match (Told::from_wire(&body), &inbound) {
                (Ok(told), Some(i)) => Ok(i.routes(told).to_wire()),
                (Err(e), _) => Err(e),
                (Ok(_), None) => return,
            },
            Kind::Forward => match (Forward::from_wire(&body), &inbound) {
                (Ok(batch), Some(i)) => Ok((i.forward(batch).await as u64).to_wire()),
                (Err(e), _) => Err(e),
                (Ok(_), None) => return,
            },
            Kind::Handover => match (Handover::from_wire(&body), &inbound) {
                (Ok(req), Some(i)) => Ok(i.handover(req).await.to_wire()),
                (Err(e), _) => Err(e),
                (Ok(_), None) => return,
            },
            Kind::Reply => {
                debug!("cluster peer sent a reply where a request belongs; closing");
                return;
            }
        };
        let sent = match reply {
            Ok(bytes) => frame::write(&mut stream, Kind::Reply, &bytes).await,
            Err(e) => {
                debug!(error = %e, ?kind, "cluster peer sent a request that does not decode; closing");
                return;
            }
        };
        if let Err(e) = sent {
            debug!(error = %e, "cluster peer stream failed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out in-memory streams to a server that answers each request with its own body,
    /// the first one late.
    #[derive(Clone, Debug)]
    struct Echo;

    impl Dial for Echo {
        type Stream = tokio::io::DuplexStream;

        async fn dial(&self, _: &str) -> io::Result<Self::Stream> {
            let (ours, mut theirs) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let mut body = Vec::new();
                let mut first = true;
                while frame::read(&mut theirs, &mut body).await.is_ok() {
                    if std::mem::take(&mut first) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    if frame::write(&mut theirs, Kind::Reply, &body).await.is_err() {
                        return;
                    }
                }
            });
            Ok(ours)
        }
    }

    #[tokio::test]
    async fn a_call_cancelled_midway_does_not_leave_its_reply_to_the_next() {
        let mut link = Link::new(Echo, 2, "peer".into());
        let ttl = Duration::from_secs(5);
        tokio::select! {
            _ = link.call::<u64, u64>(Kind::Propose, &1, ttl) => panic!("answered early"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        // The first reply arrives while the second call waits: not taken for its own.
        let got = link.call::<u64, u64>(Kind::Propose, &2, ttl).await;
        assert_eq!(got.ok(), Some(2));
    }

    #[tokio::test]
    async fn an_idle_stream_closed_by_the_peer_is_noticed_before_it_is_used() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        assert!(!closed_by_peer(&mut ours), "open and idle");
        drop(theirs);
        assert!(closed_by_peer(&mut ours), "closed by the peer");
    }
}
