//! The connection task: owns one client byte stream (TCP, TLS, WebSocket), reads in large
//! chunks and decodes every whole packet per read, feeds them to the sans-IO [`Connection`],
//! and writes its output in as few syscalls as possible. Also the only place keep-alive timers
//! and shutdown meet the socket, and where a socket the broker closed lingers so that its last
//! answer reaches the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use starling_auth::Pending;
use starling_broker::connection::OUTPUT_HIGH_WATER;
use starling_broker::{Broker, CheckAnswer, Connection, ListenerAccess, PeerInfo, Wake};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Duration;
use tracing::warn;

/// How much to read at once; the buffer grows to hold one whole packet if it must.
const READ_CHUNK: usize = 16 * 1024;
/// Time allowed to flush the last packets (CONNACK refusal, DISCONNECT) before closing.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// After the broker closes a connection, how long and how much of the client's input is read
/// and discarded before the socket is closed (see [`Lingering`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;
/// Most sockets lingering at once; beyond it a closed connection's socket closes at once.
const MAX_LINGERING: usize = 1024;
/// How long a connection asked to hand its session over to a new connection for the same
/// client id keeps reading first, for bytes the reactor has not reported yet.
const HANDOVER_READ_WAIT: Duration = Duration::from_millis(10);

/// Sockets lingering after the broker closed their connection, process-wide. Closing a socket
/// whose client is still writing makes the kernel answer with a reset, and the reset discards
/// what the client has not yet read: the CONNACK refusal or DISCONNECT that says why. So the
/// write side is shut down, and what still arrives is read and thrown away until the client
/// closes, for at most [`LINGER`] and [`LINGER_BYTES`], for at most [`MAX_LINGERING`] sockets
/// at once: it cannot be used to hold sockets open.
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_LINGERING`] places, given back when dropped.
struct Lingering;

impl Lingering {
    fn claim() -> Option<Self> {
        LINGERING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LINGERING).then_some(n + 1)
            })
            .ok()
            .map(|_| Self)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        LINGERING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection task's wake-up: the core calls [`Wake::wake`] (new deliveries, a takeover, a
/// finished commit) and the task waits on the `Notify`, which keeps one permit so a wake-up
/// that comes while the task is busy is not lost.
#[derive(Debug, Default)]
pub struct TaskWaker(Notify);

impl TaskWaker {
    /// A new waker, to hand to `Connection::new` (as a `Waker`) and to [`serve`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl Wake for TaskWaker {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// The broker-wide stop signal: set once at shutdown. Each connection waits on it with one
/// `Notified` kept for its whole life (a watch channel's `changed()` future is twice as large,
/// and every idle connection holds its wait).
#[derive(Debug, Default)]
pub struct Stop {
    stopping: AtomicBool,
    notify: Notify,
}

impl Stop {
    /// Tells everything waiting (and everything that starts waiting later) to stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once [`Stop::stop`] is called (at once if it was).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        if !self.arm(notified.as_mut()) {
            notified.await;
        }
    }

    /// Registers `wait` (made by `self.notify.notified()`) and says whether the stop already
    /// happened. Registered before the flag is read: a `stop` after this call wakes `wait`.
    fn arm(&self, wait: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        wait.enable();
        self.is_stopping()
    }
}

/// How the connection task drives its stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamOptions {
    /// The writer buffers (TLS, WebSocket): flush after the output is written.
    pub flush: bool,
}

/// A connection ready to be served: the protocol machine and the waker it was made with.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    waker: Arc<TaskWaker>,
}

impl Client {
    /// A new connection from `peer`, checked by `access` (the listener's authentication and
    /// authorization) with what the transport knows about the peer.
    pub fn new(
        peer: Option<SocketAddr>,
        now: Instant,
        access: Arc<ListenerAccess>,
        info: PeerInfo,
    ) -> Self {
        let waker = TaskWaker::new();
        let conn = Connection::new(waker.clone(), peer, now).with_access(access, info);
        Self { conn, waker }
    }
}

/// Owns the connection while its task runs. If the task ends without the connection having
/// closed (a panic in the task, or the task dropped at shutdown), the session is released as
/// if the transport had been lost, and the event is counted (`connection_tasks_aborted`).
#[derive(Debug)]
struct Guard {
    conn: Connection,
    broker: Arc<Broker>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.conn.is_closed() {
            self.broker.metrics.connection_tasks_aborted.inc();
            warn!("connection task ended without closing its connection; session released");
            self.conn
                .handle_connection_lost(&self.broker, Instant::now());
        }
    }
}

/// What one turn of the connection loop brought.
enum Turn {
    /// Go on.
    Go,
    /// Bytes were read.
    Read,
    /// The timer fired.
    Timer,
    /// Other tasks ran after this connection gave way: the rest of what was read is next.
    Resume,
    /// The broker is shutting down.
    Stop,
    /// The transport is gone (closed by the peer or an I/O error).
    Lost,
    /// A check a packet waited for was answered (boxed: every idle connection's task holds
    /// room for its largest `Turn`).
    Checked(Box<CheckAnswer>),
}

/// Serves one client, whose stream is split into `rd` and `wr`, until it disconnects, breaks
/// the protocol, or the broker shuts down; `permits` is dropped at the end (connection
/// permits).
///
/// Every idle connection holds this future, so it is kept small: a plain function returning
/// an `async move` block, because an `async fn` keeps a second copy of each argument.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<R, W, G>(
    mut rd: R,
    mut wr: W,
    client: Client,
    broker: Arc<Broker>,
    options: StreamOptions,
    stop: Arc<Stop>,
    permits: G,
) -> impl Future<Output = ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Taken apart here, not in the future: a value moved inside it would be stored twice.
    let Client { conn, waker } = client;
    let mut g = Guard { conn, broker };
    async move {
        // The loop's state is scoped so that the final flush below does not keep it.
        let (mut wbuf, by_broker) = {
            // Both waits live as long as the loop (`select!` keeps only a reference to each).
            let woken = waker.0.notified();
            tokio::pin!(woken);
            let stopped = stop.notify.notified();
            tokio::pin!(stopped);
            // Stopped before this connection started waiting.
            let stopped_early = stop.arm(stopped.as_mut());
            // Written but not yet flushed (buffering writers only).
            let mut unflushed = false;
            // Idle connections hold no buffer: both are allocated on demand and released when empty.
            let mut rbuf = BytesMut::new();
            let mut wbuf = BytesMut::new();
            let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
            let timer = tokio::time::sleep_until(far());
            tokio::pin!(timer);
            // The last read filled the room it had: more is probably waiting.
            let mut busy = false;
            // The connection gave way (`Connection::gives_way`): this turn ends without
            // reading, and the next handles what is left in `rbuf`.
            let mut yielding = false;
            // The time after the last wait (one clock read a turn).
            let mut now = Instant::now();
            // A new connection for the client id asked for the session (see below).
            let mut handing_over = false;
            // The check a parked packet waits for (an HTTP service's answer, say): run here,
            // beside everything else, and bounded by the backend's own timeout; the
            // connection reads nothing from the client meanwhile.
            let mut check: Option<Pending<Box<CheckAnswer>>> = None;

            loop {
                let broker = &*g.broker;
                let deadline = g
                    .conn
                    .poll_timeout(broker)
                    .map(tokio::time::Instant::from_std);
                let mut deadline = deadline.unwrap_or_else(far);
                if handing_over {
                    deadline = deadline.min(timer.deadline());
                }
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                // Output waiting beyond the mark: neither read nor take more until written.
                let room_to_write = wbuf.len() < OUTPUT_HIGH_WATER;
                // One answer per wait (the committer changes it concurrently); when paused for
                // the store, the journal wakes this connection at the commit it waits for.
                let can_read = room_to_write && !yielding && g.conn.wants_input(broker, now);
                if can_read {
                    reserve_read(&mut rbuf, broker, busy);
                }
                let turn = if stopped_early {
                    Turn::Stop
                } else {
                    tokio::select! {
                        biased;
                        () = &mut stopped => Turn::Stop,
                        r = write_or_flush(&mut wr, &mut wbuf), if !wbuf.is_empty() || unflushed => {
                            written(r, &mut wbuf, &mut unflushed, options.flush, broker)
                        }
                        // The rest of a burst after the others had their turn.
                        () = std::future::poll_fn(|cx| give_way(&mut yielding, cx)), if yielding => Turn::Resume,
                        r = rd.read_buf(&mut rbuf), if can_read => match r {
                            Ok(0) | Err(_) => Turn::Lost,
                            Ok(n) => {
                                broker.metrics.bytes_received.add(n as u64);
                                // The read filled the room it had (an empty buffer is given
                                // some by `BytesMut::chunk_mut`).
                                busy = rbuf.len() == rbuf.capacity();
                                Turn::Read
                            }
                        },
                        // New deliveries, a takeover, or a finished commit.
                        () = &mut woken, if room_to_write => {
                            woken.set(waker.0.notified());
                            Turn::Go
                        }
                        answer = std::future::poll_fn(|cx| poll_check(&mut check, cx)), if check.is_some() => {
                            check = None;
                            Turn::Checked(answer)
                        }
                        _ = &mut timer => Turn::Timer,
                    }
                };
                now = Instant::now();
                let was_read = matches!(turn, Turn::Read);
                if was_read {
                    handle_read(&mut g.conn, broker, now, &mut rbuf);
                }
                // Neither the transport gone nor the broker stopping: the connection ended.
                let by_broker = matches!(turn, Turn::Go | Turn::Read | Turn::Timer | Turn::Resume);
                let by_broker = by_broker || matches!(turn, Turn::Checked(_));
                if end_turn(&mut g.conn, broker, now, turn, &mut rbuf, &mut wbuf) {
                    break (wbuf, by_broker);
                }
                yielding = g.conn.gives_way();
                if check.is_none() {
                    check = g.conn.take_check().map(boxed_answer);
                }
                // A new connection for this client id waits for the session: what the client
                // already sent (a DISCONNECT, maybe) is read first. Handed over after a read
                // that left nothing waiting, or after HANDOVER_READ_WAIT (tokio reads a socket
                // once its reactor has seen it readable, which can lag behind bytes that have
                // arrived), or at once if the client is not being read.
                // While it reads, the timer holds that deadline (or an earlier one).
                if !g.conn.hand_over_asked() {
                    handing_over = false;
                } else if handing_over {
                    let due = tokio::time::Instant::from_std(now) >= timer.deadline();
                    if (was_read && !busy) || due || !can_read {
                        // Packets a pause left in the buffer are handled first: a DISCONNECT
                        // there may close the connection, and then the loop ends here.
                        g.conn.handle_hand_over(broker, now, &mut rbuf);
                        handing_over = false;
                        if end_turn(&mut g.conn, broker, now, Turn::Go, &mut rbuf, &mut wbuf) {
                            break (wbuf, true);
                        }
                    }
                } else {
                    handing_over = true;
                    let by = tokio::time::Instant::from_std(now + HANDOVER_READ_WAIT);
                    if by < timer.deadline() {
                        timer.as_mut().reset(by);
                    }
                }
            }
        };
        // What the connection still owes the client (CONNACK refusal, DISCONNECT).
        g.conn.poll_transmit(&g.broker, Instant::now(), &mut wbuf);
        // Written out here rather than in a helper `async fn`, whose future would add its own
        // state to every idle connection's task (112 bytes when measured).
        if !wbuf.is_empty()
            && let Ok(Ok(())) = tokio::time::timeout(FINAL_FLUSH, wr.write_all(&wbuf)).await
        {
            g.broker.metrics.bytes_sent.add(wbuf.len() as u64);
        }
        if options.flush {
            let _ = tokio::time::timeout(FINAL_FLUSH, wr.flush()).await;
        }
        let _ = tokio::time::timeout(FINAL_FLUSH, wr.shutdown()).await;
        drop(g);
        drop(permits);
        if by_broker && let Some(_place) = Lingering::claim() {
            let deadline = tokio::time::Instant::now() + LINGER;
            let mut sink = BytesMut::with_capacity(READ_CHUNK / 4);
            let mut left = LINGER_BYTES;
            while left > 0 {
                sink.clear();
                let read = tokio::select! {
                    () = stop.wait() => break,
                    r = tokio::time::timeout_at(deadline, rd.read_buf(&mut sink)) => r,
                };
                match read {
                    Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                    _ => break,
                }
            }
        }
    }
}

/// Pending once (waking itself at once), then ready: the task's turn ends, and it is polled
/// again after the other tasks ready to run.
fn give_way(yielding: &mut bool, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
    if std::mem::take(yielding) {
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    } else {
        std::task::Poll::Ready(())
    }
}

/// After a write or flush: what it means for the connection, and the buffer's upkeep.
fn written(
    r: std::io::Result<Option<usize>>,
    wbuf: &mut BytesMut,
    unflushed: &mut bool,
    flush: bool,
    broker: &Broker,
) -> Turn {
    match r {
        Ok(Some(0)) | Err(_) => Turn::Lost,
        Ok(Some(n)) => {
            broker.metrics.bytes_sent.add(n as u64);
            *unflushed = flush;
            if wbuf.is_empty() {
                // Release the write buffer once it is all written.
                *wbuf = BytesMut::new();
            }
            Turn::Go
        }
        Ok(None) => {
            *unflushed = false;
            Turn::Go
        }
    }
}

/// Hands what was read to the connection. A CONNECT whose check is slow (a password hash)
/// does not wait here: the check answers later (`starling_auth::HashPool`).
fn handle_read(conn: &mut Connection, broker: &Broker, now: Instant, rbuf: &mut BytesMut) {
    // Before CONNECT: a PROXY header on a listener that expects none. The codec would read
    // it as a packet that may wait for more bytes: closed here at once (nothing is sent).
    if !conn.is_active() && crate::proxy_protocol::looks_like_header(rbuf) {
        let detail =
            "a PROXY protocol header on a listener that expects none (proxy_protocol is off)";
        crate::proxy_protocol::unexpected(broker, conn.peer(), detail);
        rbuf.clear();
        conn.handle_connection_lost(broker, now);
        return;
    }
    conn.handle_input(broker, now, rbuf);
}

/// The end of a turn of the connection loop: stop or loss reach the connection, the read
/// buffer is released while empty, and the connection's output is taken while there is room.
/// True once the connection is closed.
fn end_turn(
    conn: &mut Connection,
    broker: &Broker,
    now: Instant,
    turn: Turn,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
) -> bool {
    // Input that came after CONNECT waits in the buffer while the session is handed over.
    let waiting = conn.is_waiting();
    match turn {
        Turn::Go | Turn::Read => {}
        Turn::Timer => {
            conn.handle_timeout(broker, now);
            // Packets left in the buffer by a publish-rate pause that just ended.
            conn.handle_input(broker, now, rbuf);
        }
        Turn::Resume => conn.handle_input(broker, now, rbuf),
        Turn::Stop => conn.handle_shutdown(broker, now),
        Turn::Lost => conn.handle_connection_lost(broker, now),
        Turn::Checked(answer) => {
            conn.handle_check(broker, now, *answer);
            // What the client sent after the parked packet, unless it parked again.
            conn.handle_input(broker, now, rbuf);
        }
    }
    if rbuf.is_empty() && rbuf.capacity() > 0 {
        // Release the read buffer while nothing is pending (payloads still referenced by
        // queued messages keep their own part alive).
        *rbuf = BytesMut::new();
    }
    if wbuf.len() < OUTPUT_HIGH_WATER {
        conn.poll_transmit(broker, now, wbuf);
    }
    if waiting && !conn.is_waiting() && !rbuf.is_empty() {
        conn.handle_input(broker, now, rbuf);
        conn.poll_transmit(broker, now, wbuf);
    }
    conn.is_closed()
}

/// Makes room in the read buffer for the rest of the packet being received, at once when its
/// header is in (a 1 MiB packet grown 16 KiB at a time would be copied over and over), or a
/// whole chunk while data keeps coming (`busy`). An idle connection reserves nothing: its
/// empty buffer takes a first small read (64 bytes, `BytesMut::chunk_mut`). `decode` has
/// already refused a declared size over the limit; the cap is belt and braces.
fn reserve_read(rbuf: &mut BytesMut, broker: &Broker, busy: bool) {
    let limit = broker.limits.max_packet_size as usize;
    let missing =
        starling_proto::packet_len(rbuf).map_or(0, |n| n.min(limit).saturating_sub(rbuf.len()));
    let wanted = if missing > 0 || busy {
        missing.max(READ_CHUNK / 4)
    } else {
        0
    };
    if rbuf.capacity() - rbuf.len() < wanted {
        rbuf.reserve(missing.max(READ_CHUNK));
    }
}

/// Polls the check in `check`, if any (none: never ready). Cancel-safe: the future stays in
/// `check` between polls.
fn poll_check(
    check: &mut Option<Pending<Box<CheckAnswer>>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Box<CheckAnswer>> {
    match check {
        Some(f) => f.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    }
}

/// A check's future whose answer comes boxed (see [`Turn::Checked`]).
fn boxed_answer(f: Pending<CheckAnswer>) -> Pending<Box<CheckAnswer>> {
    Box::pin(async move { Box::new(f.await) })
}

/// Writes some of `wbuf`, or, once it is empty, flushes the writer. Either step is
/// cancel-safe. `Some(n)`: bytes written; `None`: flushed.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    wbuf: &mut BytesMut,
) -> std::io::Result<Option<usize>> {
    if wbuf.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write_buf(wbuf).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection holds its task: this is most of what it costs (bench scenario 6
    /// measures the whole). The streams here are empty types, so this is the task's own state.
    #[test]
    fn the_connection_task_stays_small() {
        let broker = Arc::new(Broker::new(Default::default(), Instant::now()));
        let access = Arc::new(ListenerAccess {
            name: "test".into(),
            authenticator: Arc::new(starling_auth::StandardAuthenticator {
                allow_anonymous: true,
                passwords: None,
                identity_as_username: false,
            }),
            authorizer: None,
            enhanced: Vec::new(),
            session_queue: None,
            internal: false,
        });
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let client = Client::new(Some(peer), Instant::now(), access, PeerInfo::default());
        let task = serve(
            tokio::io::empty(),
            tokio::io::sink(),
            client,
            broker,
            StreamOptions::default(),
            Arc::new(Stop::default()),
            (),
        );
        let size = std::mem::size_of_val(&task);
        // 672 bytes when this was written (with TCP halves the task is some 40 bytes more).
        assert!(size <= 704, "the connection task grew to {size} bytes");
    }
}
