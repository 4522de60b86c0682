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
use std::pin::Pin;
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

/// Plain TCP, with Nagle's delay off (HTTP/2 writes whole frames; a small call is not held
/// back). With a
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
        /// Messages left out for the answer's bound (counted and logged by the sender).
        left_out: u64,
        /// More of the session's queue stays with the sender for the next request (with
        /// `finish`): a queue larger than one answer comes in several.
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
/// call on it fails; openraft and every other caller make one call at a time on a link. The
/// connection is driven by the call on it (no task of its own): between calls nothing reads
/// it, and before a call what the peer sent meanwhile (a close, a GOAWAY) is taken in.
pub struct Link<D: Dial> {
    dial: D,
    target: NodeId,
    addr: String,
    conn: Option<Conn<D::Stream>>,
    /// Where a reply from the peer is recorded, if anywhere.
    contact: Option<Arc<Contact>>,
}

/// An open connection: where calls are sent, and the connection they go over.
struct Conn<S> {
    send: h2::client::SendRequest<bytes::Bytes>,
    io: h2::client::Connection<S, bytes::Bytes>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Takes in what the peer sent while the connection was idle; false if it is closed
    /// (or going away) and cannot take a call.
    fn usable(&mut self) -> bool {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.io).poll(&mut cx).is_ready() {
            return false;
        }
        matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Makes one call: `body` (framed) to `kind`'s method, its answer's message back, while
    /// driving the connection.
    async fn exchange(
        &mut self,
        kind: Kind,
        addr: &str,
        body: &[u8],
    ) -> Result<bytes::Bytes, String> {
        let Conn { send, io } = self;
        let call = async {
            let (response, mut stream) = send
                .send_request(rpc::request(kind, addr), false)
                .map_err(|e| e.to_string())?;
            stream
                .send_data(rpc::frame(body), true)
                .map_err(|e| e.to_string())?;
            let response = response.await.map_err(|e| e.to_string())?;
            let (head, mut answer) = response.into_parts();
            let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
            rpc::answered(head.status, &head.headers).map_err(failed)?;
            if let Some(status) = rpc::status_of(&head.headers) {
                // Only a status (an error, as gRPC's "trailers-only" answer).
                return Err(failed(status));
            }
            let message = rpc::read_message(&mut answer).await.map_err(failed)?;
            let trailers = answer.trailers().await.map_err(|e| e.to_string())?;
            match trailers.as_ref().and_then(rpc::status_of) {
                Some(s) if s.code() == tonic::Code::Ok => Ok(message),
                Some(s) => Err(failed(s)),
                None => Err("the answer has no status".into()),
            }
        };
        tokio::select! {
            answer = call => answer,
            ended = io => Err(match ended {
                Ok(()) => "the peer closed the connection".into(),
                Err(e) => e.to_string(),
            }),
        }
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
    pub async fn call<Req: Wire, Resp: Wire>(
        &mut self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let body = req.to_wire();
        // A connection the peer closed while it was idle (the peer restarted) is opened
        // again before anything is sent on it, so the request is not lost in a dead socket.
        if self.conn.as_mut().is_some_and(|c| !c.usable()) {
            self.conn = None;
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
        let result = match tokio::time::timeout(ttl, conn.exchange(kind, &self.addr, &body)).await {
            Ok(answer) => {
                answer.and_then(|bytes| Resp::from_wire(&bytes).map_err(|e| e.to_string()))
            }
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

    /// Opens a connection: the stream, then HTTP/2 on it.
    async fn connect(&self) -> io::Result<Conn<D::Stream>> {
        let stream = self.dial.dial(&self.addr).await?;
        let (send, io) = rpc::client()
            .handshake(stream)
            .await
            .map_err(io::Error::other)?;
        Ok(Conn { send, io })
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

/// How long a peer's stream has to start HTTP/2 (its connection preface) before it is
/// closed: a stream that sends nothing does not keep one of the listener's places.
pub const PREFACE: Duration = Duration::from_secs(5);

/// Answers a peer's calls on `stream` until it closes: Raft's through `raft`, routes,
/// forwarded messages and handovers through `inbound` (without one, those are
/// `UNIMPLEMENTED`). A request that does not decode is answered `INVALID_ARGUMENT`; what is
/// not HTTP/2, or not within [`PREFACE`], closes the stream. The calls run on this task, beside the connection (at most
/// four at once, the connection's limit); once the peer closes it, the calls under way
/// finish before this returns.
pub async fn serve<S>(stream: S, raft: Raft, inbound: Option<Arc<dyn Inbound>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handler = Handler { raft, inbound };
    serve_with(stream, |kind, body| handler.answer(kind, body)).await;
}

/// Serves the calls on `stream` with `answer` (a method and its request's message to the
/// reply's message, or the call's failure).
async fn serve_with<S, F, Fut>(stream: S, answer: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Kind, bytes::Bytes) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, tonic::Status>>,
{
    use futures_util::StreamExt;
    let handshake = rpc::server().handshake::<_, bytes::Bytes>(stream);
    let mut conn = match tokio::time::timeout(PREFACE, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(error = %e, "cluster peer stream is not HTTP/2; closing");
            return;
        }
        Err(_) => {
            debug!("cluster peer stream sent no HTTP/2 preface in time; closing");
            return;
        }
    };
    let mut calls = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => calls.push(call(req, respond, &answer)),
                Some(Err(e)) => {
                    debug!(error = %e, "cluster peer connection failed");
                    break;
                }
                None => break,
            },
            Some(()) = calls.next(), if !calls.is_empty() => {}
        }
    }
    while calls.next().await.is_some() {}
}

/// One call: its message read, answered, the answer sent.
async fn call<F, Fut>(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    answer: &F,
) where
    F: Fn(Kind, bytes::Bytes) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, tonic::Status>>,
{
    let (head, mut body) = req.into_parts();
    let outcome = match Kind::from_path(head.uri.path()) {
        None => Err(tonic::Status::unimplemented(format!(
            "no method {}",
            head.uri.path()
        ))),
        Some(_) if !rpc::is_grpc(&head.headers) => {
            Err(tonic::Status::invalid_argument("not a gRPC call"))
        }
        Some(kind) => match rpc::read_message(&mut body).await {
            Ok(message) => answer(kind, message).await,
            Err(status) => Err(status),
        },
    };
    let sent = match outcome {
        Ok(reply) => match respond.send_response(rpc::response(), false) {
            Ok(mut stream) => stream
                .send_data(rpc::frame(&reply), false)
                .and_then(|()| stream.send_trailers(rpc::ok_trailers())),
            Err(e) => Err(e),
        },
        Err(status) => {
            debug!(path = head.uri.path(), code = ?status.code(), message = status.message(), "cluster peer call refused");
            respond.send_response(rpc::failure(&status), true).map(drop)
        }
    };
    if let Err(e) = sent {
        debug!(error = %e, "cluster peer answer not sent");
    }
}

/// What a node answers its peers with.
struct Handler {
    raft: Raft,
    inbound: Option<Arc<dyn Inbound>>,
}

impl Handler {
    /// The reply to a call of `kind` with `body`.
    async fn answer(&self, kind: Kind, body: bytes::Bytes) -> Result<Vec<u8>, tonic::Status> {
        fn read<T: Wire>(body: &[u8]) -> Result<T, tonic::Status> {
            T::from_wire(body).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
        }
        let raft = &self.raft;
        Ok(match (kind, &self.inbound) {
            (Kind::AppendEntries, _) => {
                let r: AppendEntriesRequest<Types> = read(&body)?;
                raft.append_entries(r).await.to_wire()
            }
            (Kind::Vote, _) => raft
                .vote(read::<VoteRequest<NodeId>>(&body)?)
                .await
                .to_wire(),
            (Kind::InstallSnapshot, _) => {
                let r: InstallSnapshotRequest<Types> = read(&body)?;
                raft.install_snapshot(r).await.to_wire()
            }
            (Kind::Propose, _) => propose_local(raft, read(&body)?).await.to_wire(),
            (Kind::Members, _) => crate::members::change_local(raft, read(&body)?)
                .await
                .to_wire(),
            (Kind::Routes | Kind::Forward | Kind::Handover, None) => {
                return Err(tonic::Status::unimplemented(format!(
                    "{} is not taken here",
                    kind.method()
                )));
            }
            (Kind::Routes, Some(i)) => i.routes(read(&body)?).to_wire(),
            (Kind::Forward, Some(i)) => (i.forward(read(&body)?).await as u64).to_wire(),
            (Kind::Handover, Some(i)) => i.handover(read(&body)?).await.to_wire(),
        })
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
            let close = self.close.clone();
            tokio::spawn(async move {
                let served = serve_with(theirs, |_, body| {
                    let answered = answered.clone();
                    async move {
                        let cmd = Command::from_wire(&body)
                            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
                        if answered.fetch_add(1, Ordering::SeqCst) == 0 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        let Command::Release { epoch, .. } = cmd else {
                            return Ok(Vec::new());
                        };
                        Ok(epoch.to_wire())
                    }
                });
                tokio::select! {
                    () = served => {}
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

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_sends_nothing_is_closed_after_the_preface_time() {
        use tokio::io::AsyncReadExt;
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let served = tokio::spawn(serve_with(theirs, |_, _| async {
            Ok::<_, tonic::Status>(Vec::new())
        }));
        tokio::time::sleep(PREFACE - Duration::from_millis(100)).await;
        assert!(!served.is_finished(), "closed before its time");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            served.is_finished(),
            "still held after {PREFACE:?} of silence"
        );
        // The server's side is gone: what it wrote (its settings) then the end.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), ours.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(_))), "{read:?}");
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
