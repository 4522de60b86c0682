//! How nodes reach each other. [`Dial`] opens a byte stream to a peer's address (TCP, with
//! TLS if configured, in production; the simulated network in tests); on it runs HTTP/2 and
//! the gRPC service of [`rpc`], whose messages are protobuf ([`crate::wire`]). [`Peers`] is
//! openraft's view of the network: one [`Link`] (one connection) per peer, one call at a time
//! on it, each bounded by openraft's deadline. [`serve`] answers a peer's calls on an accepted
//! stream. A peer's input is decoded, never trusted: a message that does not decode is
//! refused (`INVALID_ARGUMENT`), and what is not HTTP/2 closes the stream.

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

pub mod rpc;

use rpc::Kind;

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

/// One connection to one peer (HTTP/2, [`rpc`]), opened when first needed and again after a
/// call on it fails; openraft and every other caller make one call at a time on a link.
pub struct Link<D: Dial> {
    dial: D,
    target: NodeId,
    addr: String,
    conn: Option<Conn>,
    /// Where a reply from the peer is recorded, if anywhere.
    contact: Option<Arc<Contact>>,
}

/// An open connection: the gRPC client on it and the task that drives it (ended with it).
struct Conn {
    grpc: tonic::client::Grpc<H2>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// hyper's HTTP/2 sender as the service tonic's client calls.
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

/// A reply on its way.
type Responding = std::pin::Pin<
    Box<dyn Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + Send>,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Responding;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<hyper::Result<()>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Responding {
        Box::pin(self.0.send_request(req))
    }
}

impl<D: Dial> fmt::Debug for Link<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target)
            .field("addr", &self.addr)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// Why a call on a [`Link`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be connected to.
    #[error("cannot connect to {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    /// The connection failed, or the peer's reply did not come in time or did not decode.
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
            conn: None,
            contact: None,
        }
    }

    /// Records every reply from the peer in `contact`.
    pub fn with_contact(mut self, contact: Arc<Contact>) -> Self {
        self.contact = Some(contact);
        self
    }

    /// Calls the peer's `kind` method with `req` and decodes the reply, within `ttl` (and
    /// within `ttl` again for a connection to open). On any failure the connection is
    /// dropped, so that the next call opens a new one.
    pub async fn call<Req: Wire, Resp: Wire + Send + Sync + 'static>(
        &mut self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let body = req.to_wire();
        // A connection the peer closed while it was idle (the peer restarted) is opened
        // again before anything is sent on it, so the request is not lost in a dead socket.
        if let Some(conn) = self.conn.as_mut() {
            let ready = tokio::time::timeout(ttl, conn.grpc.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                self.conn = None;
            }
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let opened = tokio::time::timeout(ttl, self.connect())
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                    })
                    .map_err(|source| CallError::Unreachable {
                        addr: self.addr.clone(),
                        source,
                    })?;
                self.conn.insert(opened)
            }
        };
        let call = async {
            conn.grpc.ready().await.map_err(|e| e.to_string())?;
            conn.grpc
                .unary(
                    tonic::Request::new(body),
                    kind.path(),
                    rpc::Raw::<Resp>::default(),
                )
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
        };
        let result = match tokio::time::timeout(ttl, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("no reply within {ttl:?}")),
        };
        match result {
            Ok(resp) => {
                if let Some(c) = &self.contact {
                    c.heard(self.target);
                }
                Ok(resp)
            }
            Err(reason) => {
                self.conn = None;
                Err(self.broken(reason))
            }
        }
    }

    /// Opens a connection: the stream, HTTP/2 on it, its driver spawned.
    async fn connect(&self) -> io::Result<Conn> {
        let stream = self.dial.dial(&self.addr).await?;
        let (send, connection) = rpc::client()
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        let target = self.target;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(peer = target, error = %e, "cluster peer connection ended");
            }
        });
        let origin = format!("http://{}", self.addr)
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://peer"));
        let grpc = tonic::client::Grpc::with_origin(H2(send), origin)
            .max_decoding_message_size(rpc::MAX_MESSAGE)
            .max_encoding_message_size(rpc::MAX_MESSAGE);
        Ok(Conn { grpc, driver })
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
        Result<Resp, E>: Wire + Send + Sync + 'static,
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

/// Answers a peer's calls on `stream` until it closes: Raft's through `raft`, routes,
/// forwarded messages and handovers through `inbound` (without one, those are
/// `UNIMPLEMENTED`). A request that does not decode is answered `INVALID_ARGUMENT`; what is
/// not HTTP/2 closes the stream.
pub async fn serve<S>(stream: S, raft: Raft, inbound: Option<Arc<dyn Inbound>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (raft, inbound) = (raft.clone(), inbound.clone());
        async move { Ok::<_, std::convert::Infallible>(answer(req, raft, inbound).await) }
    });
    let served = rpc::server().serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(e) = served.await {
        debug!(error = %e, "cluster peer connection closed");
    }
}

/// The answer to one call.
async fn answer(
    req: http::Request<hyper::body::Incoming>,
    raft: Raft,
    inbound: Option<Arc<dyn Inbound>>,
) -> http::Response<tonic::body::Body> {
    let Some(kind) = Kind::from_path(req.uri().path()) else {
        debug!(
            path = req.uri().path(),
            "cluster peer called an unknown method"
        );
        return tonic::Status::unimplemented(format!("no method {}", req.uri().path())).into_http();
    };
    match (kind, inbound) {
        (Kind::AppendEntries, _) => {
            let f: Handler<AppendEntriesRequest<Types>> =
                Box::new(move |r| Box::pin(async move { raft.append_entries(r).await.to_wire() }));
            unary(req, f).await
        }
        (Kind::Vote, _) => {
            let f: Handler<VoteRequest<NodeId>> =
                Box::new(move |r| Box::pin(async move { raft.vote(r).await.to_wire() }));
            unary(req, f).await
        }
        (Kind::InstallSnapshot, _) => {
            let f: Handler<InstallSnapshotRequest<Types>> = Box::new(move |r| {
                Box::pin(async move { raft.install_snapshot(r).await.to_wire() })
            });
            unary(req, f).await
        }
        (Kind::Propose, _) => {
            let f: Handler<Command> = Box::new(move |cmd| {
                Box::pin(async move { propose_local(&raft, cmd).await.to_wire() })
            });
            unary(req, f).await
        }
        (Kind::Members, _) => {
            let f: Handler<crate::members::Change> = Box::new(move |change| {
                Box::pin(async move { crate::members::change_local(&raft, change).await.to_wire() })
            });
            unary(req, f).await
        }
        (Kind::Routes | Kind::Forward | Kind::Handover, None) => {
            debug!(?kind, "cluster peer called what this node does not take");
            tonic::Status::unimplemented(format!("{} is not taken here", kind.method())).into_http()
        }
        (Kind::Routes, Some(i)) => {
            let f: Handler<Told> =
                Box::new(move |told| Box::pin(async move { i.routes(told).to_wire() }));
            unary(req, f).await
        }
        (Kind::Forward, Some(i)) => {
            let f: Handler<Forward> = Box::new(move |batch| {
                Box::pin(async move { (i.forward(batch).await as u64).to_wire() })
            });
            unary(req, f).await
        }
        (Kind::Handover, Some(i)) => {
            let f: Handler<Handover> =
                Box::new(move |r| Box::pin(async move { i.handover(r).await.to_wire() }));
            unary(req, f).await
        }
    }
}

/// Decodes `req`'s message as `Req` (bounded by [`rpc::MAX_MESSAGE`]), answers it with `f`.
async fn unary<Req: Wire + Send + 'static>(
    req: http::Request<hyper::body::Incoming>,
    f: Handler<Req>,
) -> http::Response<tonic::body::Body> {
    tonic::server::Grpc::new(rpc::Raw::<Req>::default())
        .max_decoding_message_size(rpc::MAX_MESSAGE)
        .max_encoding_message_size(rpc::MAX_MESSAGE)
        .unary(Once(Some(f)), req)
        .await
}

/// A handler's reply, encoded, on its way.
type Replying = std::pin::Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// A method's handler.
type Handler<Req> = Box<dyn FnOnce(Req) -> Replying + Send>;

/// A method's handler, called once per call.
struct Once<Req>(Option<Handler<Req>>);

/// A handler's reply on its way.
type Answering =
    std::pin::Pin<Box<dyn Future<Output = Result<tonic::Response<Vec<u8>>, tonic::Status>> + Send>>;

impl<Req> tonic::server::UnaryService<Req> for Once<Req> {
    type Response = Vec<u8>;
    type Future = Answering;

    fn call(&mut self, request: tonic::Request<Req>) -> Answering {
        let Some(f) = self.0.take() else {
            return Box::pin(async { Err(tonic::Status::internal("answered already")) });
        };
        let reply = f(request.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(reply.await)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out in-memory streams to a server that answers each `Propose` call with the
    /// epoch of the `Release` it was sent, the first call late. Counts the streams opened and
    /// the calls answered; [`Echo::close`] closes every stream from the server's side.
    #[derive(Clone, Debug, Default)]
    struct Echo {
        opened: Arc<AtomicUsize>,
        answered: Arc<AtomicUsize>,
        close: Arc<tokio::sync::Notify>,
    }

    impl Echo {
        fn close(&self) {
            self.close.notify_waiters();
        }
    }

    impl Dial for Echo {
        type Stream = tokio::io::DuplexStream;

        async fn dial(&self, _: &str) -> io::Result<Self::Stream> {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            self.opened.fetch_add(1, Ordering::SeqCst);
            let answered = self.answered.clone();
            let service = hyper::service::service_fn(move |req| {
                let answered = answered.clone();
                let f: Handler<Command> = Box::new(move |n| {
                    Box::pin(async move {
                        if answered.fetch_add(1, Ordering::SeqCst) == 0 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        let Command::Release { epoch, .. } = n else {
                            return Vec::new();
                        };
                        epoch.to_wire()
                    })
                });
                async move { Ok::<_, std::convert::Infallible>(unary(req, f).await) }
            });
            let close = self.close.clone();
            tokio::spawn(async move {
                let served =
                    rpc::server().serve_connection(hyper_util::rt::TokioIo::new(theirs), service);
                tokio::select! {
                    _ = served => {}
                    () = close.notified() => {}
                }
            });
            Ok(ours)
        }
    }

    fn release(epoch: u64) -> Command {
        Command::Release {
            client_id: "c".into(),
            epoch,
        }
    }

    #[tokio::test]
    async fn a_call_cancelled_midway_does_not_leave_its_reply_to_the_next() {
        let mut link = Link::new(Echo::default(), 2, "peer".into());
        let ttl = Duration::from_secs(5);
        let first = release(1);
        tokio::select! {
            _ = link.call::<Command, u64>(Kind::Propose, &first, ttl) => panic!("answered early"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        // The first reply comes while the second call waits: not taken for its own.
        let got = link
            .call::<Command, u64>(Kind::Propose, &release(2), ttl)
            .await;
        assert_eq!(got.ok(), Some(2));
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_peer_while_idle_is_opened_again_before_a_call() {
        let echo = Echo::default();
        let mut link = Link::new(echo.clone(), 2, "peer".into());
        let ttl = Duration::from_secs(5);
        let first = link
            .call::<Command, u64>(Kind::Propose, &release(1), ttl)
            .await;
        let first = first.map_err(|e| e.to_string());
        assert_eq!(first, Ok(1));
        // The server closes the stream while it is idle; the link notices before the next call.
        echo.close();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = link
            .call::<Command, u64>(Kind::Propose, &release(2), ttl)
            .await;
        assert_eq!(second.ok(), Some(2));
        assert_eq!(echo.opened.load(Ordering::SeqCst), 2);
        assert_eq!(
            echo.answered.load(Ordering::SeqCst),
            2,
            "each call made once"
        );
    }

    #[tokio::test]
    async fn a_request_that_does_not_decode_is_refused_and_not_answered() {
        let echo = Echo::default();
        let mut link = Link::new(echo.clone(), 2, "peer".into());
        // A number where a `Command` belongs: field 1 of the wrong wire type.
        let got = link
            .call::<u64, u64>(Kind::Propose, &5, Duration::from_secs(5))
            .await;
        let err = format!("{got:?}");
        assert!(err.contains("InvalidArgument"), "{err}");
        assert_eq!(echo.answered.load(Ordering::SeqCst), 0);
    }
}
