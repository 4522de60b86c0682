//! The connection task: owns one client byte stream (TCP, TLS, WebSocket), reads in large
//! chunks and decodes every whole packet per read, feeds them to the sans-IO [`Connection`],
//! and writes its output in as few syscalls as possible. Also the only place keep-alive timers
//! and shutdown meet the socket.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use starling_broker::connection::OUTPUT_HIGH_WATER;
use starling_broker::{Broker, Closing, Connection, Wake};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Duration;

/// How much to read at once; the buffer grows to hold one whole packet if it must.
const READ_CHUNK: usize = 16 * 1024;
/// Time allowed to flush the last packets (CONNACK refusal, DISCONNECT) before closing.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

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
    /// CONNECT may take long to check (password hashing): handle it with
    /// `block_in_place` so other connections on this worker thread are not held up.
    pub slow_connect: bool,
}

/// Serves one client, whose stream is split into `rd` and `wr`, until it disconnects, breaks
/// the protocol, or the broker shuts down; `guard` is dropped at the end (connection permits).
///
/// Every idle connection holds this future, so it is kept small: a plain function returning
/// an `async move` block, because an `async fn` keeps a second copy of each argument.
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)] // on purpose: see above
pub fn serve<R, W, G>(
    mut rd: R,
    mut wr: W,
    mut conn: Connection,
    waker: Arc<TaskWaker>,
    broker: Arc<Broker>,
    options: StreamOptions,
    stop: Arc<Stop>,
    guard: G,
) -> impl Future<Output = ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async move {
        // The loop's state is scoped so that the final flush below does not keep it.
        let (closing, mut wbuf) = {
            // Both waits live as long as the loop (`select!` keeps only a reference to each).
            let woken = waker.0.notified();
            tokio::pin!(woken);
            let stopped = stop.notify.notified();
            tokio::pin!(stopped);
            // Stopped before this connection started waiting.
            let stopped_early = stop.arm(stopped.as_mut());
            let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
            let block_for_connect = options.slow_connect && multi_thread;
            // Written but not yet flushed (buffering writers only).
            let mut unflushed = false;
            // Idle connections hold no buffer: both are allocated on demand and released when empty.
            let mut rbuf = BytesMut::new();
            let mut wbuf = BytesMut::new();
            let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
            let timer = tokio::time::sleep_until(far());
            tokio::pin!(timer);
            // Set while the publish rate limit pauses reading.
            let mut paused_until: Option<Instant> = None;
            // The last read filled the room it had: more is probably waiting.
            let mut busy = false;

            let closing: Option<Closing> = loop {
                {
                    let deadline = match (conn.deadline(), paused_until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let deadline = deadline
                        .map(tokio::time::Instant::from_std)
                        .unwrap_or_else(far);
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                }
                // One answer per wait (the committer changes it concurrently); when paused, the
                // journal wakes this connection at the commit it waits for.
                let store_paused = conn.paused_for_store();
                let can_read = wbuf.len() < OUTPUT_HIGH_WATER
                    && paused_until.is_none()
                    && !store_paused
                    && !conn.backpressured();
                // Held acknowledgements or a store pause: woken by the commit.
                let has_held = store_paused || conn.has_held();
                if can_read {
                    // Room for the rest of the packet being received, at once when its header is in
                    // (a 1 MiB packet grown 16 KiB at a time would be copied over and over), or a
                    // whole chunk while data keeps coming. An idle connection reserves nothing: its
                    // empty buffer takes a first small read (64 bytes, `BytesMut::chunk_mut`).
                    // `decode` has already refused a declared size over the limit; the cap is belt
                    // and braces.
                    let limit = conn.decode_limits().max_packet_size as usize;
                    let missing = starling_proto::packet_len(&rbuf)
                        .map_or(0, |n| n.min(limit).saturating_sub(rbuf.len()));
                    let wanted = if missing > 0 || busy {
                        missing.max(READ_CHUNK / 4)
                    } else {
                        0
                    };
                    if rbuf.capacity() - rbuf.len() < wanted {
                        rbuf.reserve(missing.max(READ_CHUNK));
                    }
                }
                // An empty buffer gets 64 bytes of room from `BytesMut::chunk_mut` when read into.
                let room = (rbuf.capacity() - rbuf.len()).max(64);
                let step = if stopped_early {
                    Err(Some(conn.shutdown()))
                } else {
                    tokio::select! {
                        biased;
                        () = &mut stopped => Err(Some(conn.shutdown())),
                        r = write_or_flush(&mut wr, &mut wbuf), if !wbuf.is_empty() || unflushed => match r {
                            Ok(Some(0)) | Err(_) => Err(None),
                            Ok(Some(n)) => {
                                broker.metrics.bytes_sent.add(n as u64);
                                unflushed = options.flush;
                                if wbuf.is_empty() {
                                    wbuf = BytesMut::new();
                                }
                                Ok(())
                            }
                            Ok(None) => {
                                unflushed = false;
                                Ok(())
                            }
                        },
                        r = rd.read_buf(&mut rbuf), if can_read => match r {
                            Ok(0) | Err(_) => Err(None),
                            Ok(n) => {
                                broker.metrics.bytes_received.add(n as u64);
                                busy = n >= room;
                                if block_for_connect && !conn.is_active() {
                                    tokio::task::block_in_place(|| {
                                        handle_input(&mut conn, &mut rbuf, &mut paused_until)
                                    })
                                } else {
                                    handle_input(&mut conn, &mut rbuf, &mut paused_until)
                                }
                            }
                        },
                        // New deliveries, or (with held acknowledgements) a finished commit.
                        () = &mut woken, if can_read || has_held => {
                            woken.set(waker.0.notified());
                            Ok(())
                        }
                        _ = &mut timer => {
                            let now = Instant::now();
                            if paused_until.is_some_and(|t| now >= t) {
                                paused_until = None;
                                handle_input(&mut conn, &mut rbuf, &mut paused_until)
                            } else {
                                conn.check_timeouts(now).map_err(Some)
                            }
                        }
                    }
                };
                if rbuf.is_empty() && rbuf.capacity() > 0 {
                    // Release the read buffer while nothing is pending (payloads still referenced by
                    // queued messages keep their own part alive).
                    rbuf = BytesMut::new();
                }
                let step = step.and_then(|()| conn.release_held().map_err(Some));
                let step = step.and_then(|()| {
                    if wbuf.len() < OUTPUT_HIGH_WATER {
                        conn.pump(Instant::now()).map_err(Some)
                    } else {
                        Ok(())
                    }
                });
                take_output(&mut conn, &mut wbuf);
                if let Err(closing) = step {
                    break closing;
                }
            };
            (closing, wbuf)
        };
        take_output(&mut conn, &mut wbuf);
        if !wbuf.is_empty()
            && let Ok(Ok(())) = tokio::time::timeout(FINAL_FLUSH, wr.write_all(&wbuf)).await
        {
            broker.metrics.bytes_sent.add(wbuf.len() as u64);
        }
        if options.flush {
            let _ = tokio::time::timeout(FINAL_FLUSH, wr.flush()).await;
        }
        let _ = tokio::time::timeout(FINAL_FLUSH, wr.shutdown()).await;
        conn.close(closing.as_ref(), Instant::now());
        drop(guard);
    }
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

/// Decodes and handles every whole packet in `rbuf`, stopping early (and setting
/// `paused_until`) when the publish rate limit says to wait.
fn handle_input(
    conn: &mut Connection,
    rbuf: &mut BytesMut,
    paused_until: &mut Option<Instant>,
) -> Result<(), Option<Closing>> {
    let now = Instant::now();
    loop {
        if let Some(until) = conn.throttled_until(now) {
            *paused_until = Some(until);
            return Ok(());
        }
        let limits = conn.decode_limits();
        match starling_proto::decode(rbuf, conn.version(), &limits) {
            Ok(Some(packet)) => conn.handle_packet(packet, now).map_err(Some)?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Some(conn.handle_decode_error(&e))),
        }
    }
}

fn take_output(conn: &mut Connection, wbuf: &mut BytesMut) {
    let out = conn.output();
    if out.is_empty() {
        return;
    }
    if wbuf.is_empty() {
        std::mem::swap(wbuf, out);
    } else {
        wbuf.extend_from_slice(out);
        out.clear();
    }
}
