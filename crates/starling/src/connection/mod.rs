//! The connection task: owns one client byte stream (TCP, TLS, WebSocket), reads in large
//! chunks and decodes every whole packet per read, feeds them to the sans-IO [`Connection`],
//! and writes its output in as few syscalls as possible. Also the only place keep-alive timers
//! and shutdown meet the socket, and where a socket the broker closed lingers so that its last
//! answer reaches the client.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use starling_auth::Pending;
use starling_broker::connection::OUTPUT_HIGH_WATER;
use starling_broker::{Broker, CheckAnswer, Connection, ListenerAccess, PeerInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Duration;
use tracing::warn;

use crate::accept::Permits;
use crate::wakeup;
pub use crate::wakeup::{Stop, TaskWaker};

mod park;
pub(crate) use park::Lot;

/// How much to read at once; the buffer grows to hold one whole packet if it must.
const READ_CHUNK: usize = 16 * 1024;
/// The first read of a connection whose read buffer is empty, on the stack.
const FIRST_READ: usize = READ_CHUNK;
/// Time allowed to flush the last packets (CONNACK refusal, DISCONNECT) before closing.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// After the broker closes a connection, how long and how much of the client's input is read
/// and discarded before the socket is closed (see [`Lingering`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;
/// Most sockets lingering at once; beyond it a closed connection's socket closes at once.
const MAX_LINGERING: usize = 1024;
/// How long a connection asked to hand its session over to a new connection for the same
/// client id keeps reading first, at most: while its client's bytes keep coming, or, when
/// they can change what the new connection gets, for bytes still on their way.
const HANDOVER_READ_WAIT: Duration = Duration::from_millis(10);
/// `Task::idle_since` of a connection without messages since it was opened or resumed.
const FRESH: u32 = u32::MAX;

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
        stop: &Arc<Stop>,
    ) -> Self {
        let waker = TaskWaker::new(stop);
        let conn = Connection::new(waker.clone(), peer, now).with_access(access, info);
        Self { conn, waker }
    }
}

/// Owns the connection while its task runs, and the task's place in the stop's registry. If
/// the task ends without the connection having closed (a panic in the task, or the task
/// dropped at shutdown), the session is released as if the transport had been lost, and the
/// event is counted (`connection_tasks_aborted`).
#[derive(Debug)]
struct Guard {
    conn: Connection,
    broker: Arc<Broker>,
    waker: Arc<TaskWaker>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.waker.unregister();
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
    /// Asked to hand the session over, the connection gave way once (the runtime polled its
    /// I/O driver meanwhile) and then found nothing to read.
    Probed,
    /// Other tasks ran after this connection gave way: the rest of what was read is next.
    Resume,
    /// The broker is shutting down.
    Stop,
    /// The transport is gone (closed by the peer or an I/O error).
    Lost,
    /// A check a packet waited for was answered (boxed: the task holds room for its largest
    /// `Turn` while it waits).
    Checked(Box<CheckAnswer>),
}

/// Asks the runtime to poll this task again once it has polled its I/O driver and run the
/// tasks that were ready: tokio's `yield_now`, polled once here (the wake-up it hands to the
/// scheduler outlives the future, so the task keeps no room for it). A plain self-wake would
/// put the task back in the run queue before the driver has seen the other clients' sockets:
/// a burst whose subscribers' wake-ups are held back (`wakeup::hold`) would then give way to
/// nobody.
fn give_way(cx: &mut Context<'_>) {
    // Pending: the wake-up is deferred (outside a runtime tokio wakes the task at once).
    let _ = pin!(tokio::task::yield_now()).poll(cx);
}

/// Where a connection asked to hand its session over is in reading what its client already
/// sent (a DISCONNECT among it changes what the new connection gets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handover {
    /// Not asked.
    No,
    /// Asked: the next wait gives way first, so that the runtime polls its I/O driver (tokio
    /// reads a socket only once its reactor has reported it readable, which can lag behind
    /// bytes that have arrived).
    Probe,
    /// Gave way: the wait reads once and, with nothing to read, ends (`Turn::Probed`).
    Probed,
    /// Read something: reads on until a read leaves nothing waiting.
    Reading,
}

/// Where the connection is in giving way to the other tasks (`Connection::gives_way`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Yield {
    /// Not giving way.
    No,
    /// This turn ends without reading; the next handles what is left in the read buffer.
    Asked,
    /// The task asked to run again after the others and ended its turn: the rest of the
    /// burst is next.
    Yielded,
    /// Woken by a wide fan-out (`Wake::wake_in_fan_out`) with nothing left to write, the
    /// task gave way once before taking its deliveries: its publisher's next read, routed
    /// meanwhile, goes out in the same write (at 1,000 subscribers each write carried a
    /// tenth of what it does at 100). The next poll takes them (`Turn::Go`).
    Gathering,
    /// The turn woke a few other connections (at most [`DELIVERING_MAX`]: its deliveries)
    /// and left output of its own (its acknowledgements, say): it gives way once before
    /// writing it, so that the deliveries are written first. A message's way to its
    /// subscriber then waits for no write of the publisher's, and the publisher's
    /// acknowledgement for a few writes. After a turn that woke more, the publisher goes on
    /// (writes, reads and routes again) before they run, so that they write more at once.
    Delivering,
}

/// Most connections a turn may have woken for it to give way before writing its own output
/// (`Yield::Delivering`): a message's few subscribers (p99 at 10,000 msg/s to one subscriber
/// 252 -> 213 us, `bench/RESULTS.md`), not a fan-out (to 100 subscribers at QoS 1, giving
/// way after every turn cost a tenth of the throughput).
const DELIVERING_MAX: usize = 4;

/// The connection loop's switches, in one byte (every idle connection holds them).
#[derive(Clone, Copy, Debug, Default)]
struct Flags(u8);

impl Flags {
    /// The writer buffers (TLS, WebSocket): flush after the output is written.
    const FLUSH: u8 = 1;
    /// Written but not yet flushed (buffering writers only).
    const UNFLUSHED: u8 = 1 << 1;
    /// The last read filled the room it had: more is probably waiting.
    const BUSY: u8 = 1 << 2;
    /// The stop keeps wake-ups this task held back in a burst it gave way in.
    const KEPT: u8 = 1 << 3;
    /// This turn's wait reads from the client.
    const CAN_READ: u8 = 1 << 4;
    /// This turn's wait takes the core's wake-ups (the output is below its mark).
    const ROOM_TO_WRITE: u8 = 1 << 5;
    /// The connection may be parked while idle (plain TCP: see `park.rs`).
    const CAN_PARK: u8 = 1 << 6;
    /// The connection was last resumed less than `park::QUICK_MS` after it was parked.
    const QUICK: u8 = 1 << 7;

    fn get(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// The flag's value, and the flag cleared.
    fn take(&mut self, flag: u8) -> bool {
        let was = self.get(flag);
        self.set(flag, false);
        was
    }
}

/// The connection loop's state between turns. Every idle connection holds it, so it holds
/// little: a timer only while a deadline is near (later ones are filed in the stop's wheel,
/// see `wakeup.rs`), buffers only while bytes wait, one waker for the core's wake-ups and the
/// stop alike.
struct Task<S> {
    /// The client's byte stream, read and written in the same poll (one value: a TCP stream
    /// is not split into halves that would share it through another allocation).
    io: S,
    g: Guard,
    /// Read and not yet handled; released while empty.
    rbuf: BytesMut,
    /// The task's own timer, armed while its deadline is at most `wakeup::NEAR` away.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The check a parked packet waits for (an HTTP service's answer, say): run here, beside
    /// everything else, and bounded by the backend's own timeout; the connection reads nothing
    /// from the client meanwhile.
    /// (Boxed once more: a thin pointer in every idle connection's task, where the future
    /// itself is a wide one.)
    check: Option<Box<Pending<Box<CheckAnswer>>>>,
    /// A new connection for the client id asked for the session: where the connection is in
    /// reading what its client already sent before it hands the session over, by the
    /// timer's deadline at the latest (see `Task::after`).
    handing_over: Handover,
    yielding: Yield,
    /// The task's switches, one bit each (see [`Flags`]).
    flags: Flags,
    /// When a message last went either way (`Connection::take_traffic`), in the stop's
    /// milliseconds (wrapping), or [`FRESH`]: none since the connection was opened or
    /// resumed (see [`Task::parks`]).
    idle_since: u32,
}

/// Serves one client over its byte stream `io` until it disconnects, breaks the protocol, or
/// the broker shuts down; `permits` is dropped at the end (connection permits). A plain TCP
/// connection is served by [`serve_tcp`] instead, which can also park it while it is idle.
///
/// Every idle connection holds this future, so it is kept small: a plain function returning
/// an `async move` block (an `async fn` keeps a second copy of each argument), whose loop
/// state is one [`Task`] and whose end runs boxed ([`finish`]).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<S, G>(
    io: S,
    client: Client,
    broker: Arc<Broker>,
    options: StreamOptions,
    permits: G,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    run::<S, G, Unparked>(Task::new(io, client, broker, options.flush, false), permits)
}

/// [`serve`] for a plain TCP connection, which is parked while it is idle (`park.rs`): its
/// task ends, and it is resumed in a new one when its client sends something, the core has
/// something for it, or a deadline comes.
pub(crate) fn serve_tcp(
    io: tokio::net::TcpStream,
    client: Client,
    broker: Arc<Broker>,
    permits: Permits,
) -> impl Future<Output = ()> {
    run::<_, _, park::Tcp>(Task::new(io, client, broker, false, true), permits)
}

/// How a connection is parked (a type without a value: the task holds no room for it).
trait Park<S, G> {
    /// Parks the connection of `task` (idle: `Task::parks`), or gives the task back to be
    /// served on.
    #[allow(clippy::type_complexity)]
    fn park(task: Task<S>, permits: G) -> Result<(), (Box<Task<S>>, G)>;
}

/// Connections that are never parked (`Task::parks` is false for them).
enum Unparked {}

impl<S, G> Park<S, G> for Unparked {
    fn park(task: Task<S>, permits: G) -> Result<(), (Box<Task<S>>, G)> {
        Err((Box::new(task), permits))
    }
}

/// The connection loop: turns until the connection closes, then its end ([`finish`]),
/// boxed. Where the connection may be parked, the task ends when it is.
#[allow(clippy::manual_async_fn)] // as `serve`
fn run<S, G, P>(mut task: Task<S>, mut permits: G) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Park<S, G>,
{
    async move {
        // Only the task is kept across a wait (not the time, say).
        task.prepare(Instant::now());
        let by_broker = loop {
            let turn = std::future::poll_fn(|cx| task.poll_turn(cx)).await;
            // One clock read a turn.
            let now = Instant::now();
            // The subscribers this turn delivered to are scheduled at its end, or, when it
            // gives way in the middle of a burst, once the burst is routed (`wakeup::hold`).
            let (closed, held) = wakeup::hold(|| task.after(turn, now));
            if let Some(by_broker) = closed {
                drop(held);
                if task.flags.get(Flags::KEPT) {
                    task.g.waker.release();
                }
                break by_broker;
            }
            task.held(held);
            task.prepare(now);
            if task.parks(now) {
                match P::park(task, permits) {
                    Ok(()) => return,
                    // Not parked (the broker is stopping, say): served on here.
                    Err((t, p)) => (task, permits) = (*t, p),
                }
            }
        };
        let flush = task.flags.get(Flags::FLUSH);
        let Task { io, g, .. } = task;
        Box::pin(finish(io, g, flush, by_broker, permits)).await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Task<S> {
    /// A new connection's loop state (taken apart here, not in the future: a value moved
    /// inside it would be stored twice).
    fn new(io: S, client: Client, broker: Arc<Broker>, flush: bool, can_park: bool) -> Self {
        let Client { conn, waker } = client;
        let g = Guard {
            conn,
            broker,
            waker,
        };
        Self::with(io, g, flush, can_park, FRESH)
    }

    fn with(io: S, g: Guard, flush: bool, can_park: bool, idle_since: u32) -> Self {
        let mut flags = Flags::default();
        flags.set(Flags::FLUSH, flush);
        flags.set(Flags::CAN_PARK, can_park);
        Self {
            io,
            g,
            rbuf: BytesMut::new(),
            timer: None,
            check: None,
            handing_over: Handover::No,
            yielding: Yield::No,
            flags,
            idle_since,
        }
    }

    /// Whether the connection may be parked now: it is active, no message has gone either
    /// way for `limits.park_idle_after_secs` (or since it was opened or resumed: control
    /// packets such as SUBSCRIBE or PINGREQ do not count), and it holds nothing a task must
    /// keep: no input or output waiting, no near deadline (its own timer), no check, no
    /// handover, no burst it is giving way in, no wake-up not yet taken.
    fn parks(&mut self, now: Instant) -> bool {
        let Some(after) = self.park_after() else {
            return false;
        };
        (self.idle_since == FRESH || self.quiet_for(now) >= after)
            && self.flags.get(Flags::CAN_READ)
            && self.timer.is_none()
            && self.check.is_none()
            && self.rbuf.is_empty()
            && !self.flags.get(Flags::UNFLUSHED)
            && self.handing_over == Handover::No
            && self.yielding == Yield::No
            && !self.flags.get(Flags::KEPT)
            && self.g.conn.is_active()
            && self.g.conn.output().is_empty()
            && !self.g.waker.is_woken()
            && !self.g.waker.is_stopping()
    }

    /// How long the connection must be quiet before it is parked, in milliseconds (`None`:
    /// never). From `limits.park_idle_after_secs`: long enough by default that a client
    /// publishing or receiving every few seconds keeps its task (a park and a resume cost
    /// about as much as handling a few small packets).
    fn park_after(&self) -> Option<u32> {
        let secs = self.g.broker.limits.park_idle_after_secs;
        if !self.flags.get(Flags::CAN_PARK) || secs == 0 {
            return None;
        }
        Some(u32::try_from(secs.saturating_mul(1000)).unwrap_or(u32::MAX / 2))
    }

    /// Milliseconds since the client last sent or was sent something.
    fn quiet_for(&self, now: Instant) -> u32 {
        self.g.waker.stop().ms32(now).wrapping_sub(self.idle_since)
    }

    /// When a connection that may be parked will have been quiet long enough (plus the
    /// wheel's margin: it wakes the task between `NEAR + TICK` and `NEAR` before a deadline).
    fn park_deadline(&self, now: Instant) -> Option<Instant> {
        let after = self.park_after().filter(|_| self.idle_since != FRESH)?;
        let left = after.checked_sub(self.quiet_for(now))?;
        Some(now + Duration::from_millis(u64::from(left)) + wakeup::NEAR + wakeup::TICK)
    }

    /// Before a wait: the timer armed or the deadline filed, and whether to read (`can_read`)
    /// and to take the core's wake-ups (`room_to_write`) during it.
    fn prepare(&mut self, now: Instant) {
        let mut deadline = self.g.conn.poll_timeout(&self.g.broker);
        if let Some(p) = self.park_deadline(now) {
            deadline = Some(deadline.map_or(p, |d| d.min(p)));
        }
        if let Some(t) = self
            .timer
            .as_ref()
            .filter(|_| self.handing_over != Handover::No)
        {
            let by = t.deadline().into_std();
            deadline = Some(deadline.map_or(by, |d| d.min(by)));
        }
        self.arm(deadline, now);
        let broker = &*self.g.broker;
        // Output waiting beyond the mark: neither read nor take more until written.
        self.flags.set(
            Flags::ROOM_TO_WRITE,
            self.g.conn.output().len() < OUTPUT_HIGH_WATER,
        );
        // One answer per wait (the committer changes it concurrently); when paused for the
        // store, the journal wakes this connection at the commit it waits for.
        self.flags.set(
            Flags::CAN_READ,
            self.flags.get(Flags::ROOM_TO_WRITE)
                && self.yielding == Yield::No
                && self.g.conn.wants_input(broker, now),
        );
        if self.flags.get(Flags::CAN_READ) {
            reserve_read(&mut self.rbuf, broker, self.flags.get(Flags::BUSY));
        }
    }

    /// The wake-ups a turn held back: kept by the stop while the connection gives way in
    /// the middle of a burst, made (with any kept before) once a turn ends without.
    fn held(&mut self, held: wakeup::Held) {
        if self.yielding == Yield::Asked {
            if !held.is_empty() {
                self.flags.set(Flags::KEPT, true);
            }
            self.g.waker.keep(held);
        } else {
            if self.yielding == Yield::No
                && (1..=DELIVERING_MAX).contains(&held.len())
                && !self.g.conn.output().is_empty()
            {
                self.yielding = Yield::Delivering;
            }
            drop(held);
            if self.flags.take(Flags::KEPT) {
                self.g.waker.release();
            }
        }
    }

    /// A deadline more than `wakeup::NEAR` away is filed in the stop's wheel, which wakes the
    /// task shortly before it, and the task keeps no timer; a nearer one gets the task's own.
    fn arm(&mut self, deadline: Option<Instant>, now: Instant) {
        let g = &self.g;
        if g.waker.file(deadline, now) {
            self.timer = None;
            return;
        }
        let Some(deadline) = deadline else {
            self.timer = None;
            return;
        };
        let at = tokio::time::Instant::from_std(deadline);
        match &mut self.timer {
            Some(t) if t.deadline() == at => {}
            Some(t) => t.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// One wait: the stop, then writing, giving way, reading, the core's wake-ups, a check's
    /// answer and the timer, in that order. Every step is cancel-safe.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<Turn> {
        if self.g.waker.is_stopping() {
            return Poll::Ready(Turn::Stop);
        }
        if self.yielding == Yield::Delivering {
            // Polled again after the connections this turn woke (see `Yield::Delivering`).
            self.yielding = Yield::No;
            give_way(cx);
            return Poll::Pending;
        }
        if (!self.g.conn.output().is_empty() || self.flags.get(Flags::UNFLUSHED))
            && let Poll::Ready(r) = self.poll_write_or_flush(cx)
        {
            return Poll::Ready(self.written(r));
        }
        match self.handing_over {
            Handover::Probe => {
                self.handing_over = Handover::Probed;
                // Polled again once the runtime has polled its I/O driver.
                give_way(cx);
                return Poll::Pending;
            }
            Handover::Probed => {
                self.handing_over = Handover::Reading;
                if !self.flags.get(Flags::CAN_READ) {
                    return Poll::Ready(Turn::Probed);
                }
                return Poll::Ready(match self.poll_read(cx) {
                    Poll::Pending => Turn::Probed,
                    Poll::Ready(r) => self.read(r),
                });
            }
            Handover::No | Handover::Reading => {}
        }
        match self.yielding {
            // The rest of a burst after the others had their turn.
            Yield::Asked => {
                self.yielding = Yield::Yielded;
                give_way(cx);
            }
            Yield::Yielded => {
                self.yielding = Yield::No;
                return Poll::Ready(Turn::Resume);
            }
            Yield::Gathering => {
                self.yielding = Yield::No;
                return Poll::Ready(Turn::Go);
            }
            Yield::No | Yield::Delivering => {}
        }
        if self.flags.get(Flags::CAN_READ)
            && let Poll::Ready(r) = self.poll_read(cx)
        {
            return Poll::Ready(self.read(r));
        }
        // New deliveries, a takeover, a finished commit, the wheel or the stop; with the
        // output full, only registered (the stop must still reach the task).
        if self.flags.get(Flags::ROOM_TO_WRITE) {
            if let Poll::Ready(fanned) = self.g.waker.poll_woken(cx) {
                if fanned && self.yielding == Yield::No && self.g.conn.output().is_empty() {
                    self.yielding = Yield::Gathering;
                    give_way(cx);
                    return Poll::Pending;
                }
                return Poll::Ready(Turn::Go);
            }
        } else {
            self.g.waker.register(cx);
        }
        if let Some(check) = self.check.as_mut()
            && let Poll::Ready(answer) = check.as_mut().as_mut().poll(cx)
        {
            self.check = None;
            return Poll::Ready(Turn::Checked(answer));
        }
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Turn::Timer);
        }
        Poll::Pending
    }

    /// Reads into the read buffer where it has room (made by `reserve_read` while data keeps
    /// coming or a packet is incomplete). An idle connection's buffer holds no memory: its
    /// first read goes to the stack, and only what came is kept. Sets `busy` when the read
    /// filled the room it had.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.rbuf.capacity() > self.rbuf.len() {
            let n = ready!(pin!(self.io.read_buf(&mut self.rbuf)).poll(cx))?;
            self.flags
                .set(Flags::BUSY, self.rbuf.len() == self.rbuf.capacity());
            return Poll::Ready(Ok(n));
        }
        let mut first = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut into = ReadBuf::uninit(&mut first);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut into))?;
        let read = into.filled();
        self.rbuf.extend_from_slice(read);
        self.flags.set(Flags::BUSY, read.len() == FIRST_READ);
        Poll::Ready(Ok(read.len()))
    }

    /// What a read means for the turn.
    fn read(&mut self, r: std::io::Result<usize>) -> Turn {
        match r {
            Ok(0) | Err(_) => Turn::Lost,
            Ok(n) => {
                self.g.broker.metrics.bytes_received.add(n as u64);
                Turn::Read
            }
        }
    }

    /// Writes some of the output, or, once it is all written, flushes the writer.
    /// `Some(n)`: bytes written; `None`: flushed.
    fn poll_write_or_flush(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<Option<usize>>> {
        let out = self.g.conn.output();
        if out.is_empty() {
            return Pin::new(&mut self.io).poll_flush(cx).map_ok(|()| None);
        }
        // `write_buf` writes vectored where the stream can (one `writev`).
        let n = ready!(pin!(self.io.write_buf(out)).poll(cx))?;
        Poll::Ready(Ok(Some(n)))
    }

    /// After a write or flush: what it means for the connection, and the buffer's upkeep.
    fn written(&mut self, r: std::io::Result<Option<usize>>) -> Turn {
        match r {
            Ok(Some(0)) | Err(_) => Turn::Lost,
            Ok(Some(n)) => {
                self.g.broker.metrics.bytes_sent.add(n as u64);
                self.flags
                    .set(Flags::UNFLUSHED, self.flags.get(Flags::FLUSH));
                let out = self.g.conn.output();
                if out.is_empty() {
                    // Release the output's memory once it is all written.
                    *out = BytesMut::new();
                }
                Turn::Go
            }
            Ok(None) => {
                self.flags.set(Flags::UNFLUSHED, false);
                Turn::Go
            }
        }
    }

    /// After a wait: the turn handled. `Some(by_broker)` once the connection is closed.
    fn after(&mut self, turn: Turn, now: Instant) -> Option<bool> {
        let broker = &*self.g.broker;
        let conn = &mut self.g.conn;
        let was_read = matches!(turn, Turn::Read);
        let probed = matches!(turn, Turn::Probed);
        if was_read {
            handle_read(conn, broker, now, &mut self.rbuf);
        }
        // Neither the transport gone nor the broker stopping: the connection ended.
        let by_broker = !matches!(turn, Turn::Stop | Turn::Lost);
        if end_turn(conn, broker, now, turn, &mut self.rbuf) {
            return Some(by_broker);
        }
        self.yielding = if conn.gives_way() {
            Yield::Asked
        } else {
            Yield::No
        };
        if self.check.is_none() {
            self.check = conn.take_check().map(|f| Box::new(boxed_answer(f)));
        }
        // A new connection for this client id waits for the session: what the client
        // already sent (a DISCONNECT, maybe) is read first. The connection gives way once, so
        // that the runtime polls its I/O driver and sees what has arrived, and reads; handed
        // over when that finds nothing (unless what the client may still be sending can
        // change what the new connection gets: then it waits for it), after a read that left
        // nothing waiting, after HANDOVER_READ_WAIT, or at once if the client is not being
        // read. While it reads, the timer holds that deadline (or an earlier one).
        if !conn.hand_over_asked() {
            self.handing_over = Handover::No;
        } else if self.handing_over != Handover::No {
            let due = self
                .timer
                .as_ref()
                .is_none_or(|t| now >= t.deadline().into_std());
            let nothing_more = probed && !conn.hand_over_waits_for_input();
            if (was_read && !self.flags.get(Flags::BUSY))
                || nothing_more
                || due
                || !self.flags.get(Flags::CAN_READ)
            {
                // Packets a pause left in the buffer are handled first: a DISCONNECT there
                // may close the connection, and then the loop ends here.
                conn.handle_hand_over(broker, now, &mut self.rbuf);
                self.handing_over = Handover::No;
                if end_turn(conn, broker, now, Turn::Go, &mut self.rbuf) {
                    return Some(true);
                }
            }
        } else {
            self.handing_over = Handover::Probe;
            let by = tokio::time::Instant::from_std(now + HANDOVER_READ_WAIT);
            match &mut self.timer {
                Some(t) if t.deadline() <= by => {}
                Some(t) => t.as_mut().reset(by),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(by))),
            }
        }
        // Messages either way keep the connection's task for a while (`parks`).
        if conn.take_traffic() {
            self.idle_since = self.g.waker.stop().ms32(now);
        }
        None
    }
}

/// The end of a connection: what it still owes the client (CONNACK refusal, DISCONNECT) is
/// written, the stream shut down, the session released (`g` dropped) and the permits given
/// back; then, if the broker closed it, the socket lingers (see [`Lingering`]). Runs boxed,
/// once per connection, so that idle connections do not hold room for its timers.
async fn finish<S, G>(mut io: S, mut g: Guard, flush: bool, by_broker: bool, permits: G)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    g.conn.transmit(&g.broker, Instant::now());
    let out = g.conn.output();
    if !out.is_empty()
        && let Ok(Ok(())) = tokio::time::timeout(FINAL_FLUSH, io.write_all(out)).await
    {
        g.broker.metrics.bytes_sent.add(out.len() as u64);
    }
    if flush {
        let _ = tokio::time::timeout(FINAL_FLUSH, io.flush()).await;
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, io.shutdown()).await;
    let stop = g.waker.stop().clone();
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
                r = tokio::time::timeout_at(deadline, io.read_buf(&mut sink)) => r,
            };
            match read {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
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
) -> bool {
    // Input that came after CONNECT waits in the buffer while the session is handed over.
    let waiting = conn.is_waiting();
    match turn {
        Turn::Go | Turn::Read | Turn::Probed => {}
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
    if rbuf.is_empty() {
        // Release the read buffer while nothing is pending (payloads still referenced by
        // queued messages keep their own part alive). Even one with no room left: after the
        // last packet was split off, it still holds a reference to the block it came from.
        *rbuf = BytesMut::new();
    }
    if conn.output().len() < OUTPUT_HIGH_WATER {
        conn.transmit(broker, now);
    }
    if waiting && !conn.is_waiting() && !rbuf.is_empty() {
        conn.handle_input(broker, now, rbuf);
        conn.transmit(broker, now);
    }
    conn.is_closed()
}

/// Makes room in the read buffer for the rest of the packet being received, at once when its
/// header is in (a 1 MiB packet grown 16 KiB at a time would be copied over and over), or a
/// whole chunk while data keeps coming (`busy`). An idle connection reserves nothing: its
/// first read goes to the stack (`Task::poll_read`). `decode` has already refused a declared
/// size over the limit; the cap is belt and braces.
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

/// A check's future whose answer comes boxed (see [`Turn::Checked`]).
fn boxed_answer(f: Pending<CheckAnswer>) -> Pending<Box<CheckAnswer>> {
    Box::pin(async move { Box::new(f.await) })
}

#[cfg(test)]
mod tests;
