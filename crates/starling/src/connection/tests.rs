//! The connection task's own tests: giving way, and the size every idle connection pays.

use super::*;

/// `give_way` relies on tokio keeping the wake-up `yield_now` defers after the future is
/// dropped: a task that gives way is polled again, after the task that was ready.
#[test]
fn a_task_that_gives_way_runs_again_after_the_ready_ones() {
    let runtimes = [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    ];
    for rt in runtimes {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o = order.clone();
        rt.block_on(async move {
            let first = tokio::spawn(async move {
                let other = {
                    let o = o.clone();
                    tokio::spawn(async move { o.lock().unwrap().push("other") })
                };
                let mut gave = false;
                std::future::poll_fn(|cx| {
                    if gave {
                        return Poll::Ready(());
                    }
                    gave = true;
                    o.lock().unwrap().push("gave way");
                    give_way(cx);
                    Poll::Pending
                })
                .await;
                o.lock().unwrap().push("resumed");
                other.await.unwrap();
            });
            tokio::time::timeout(Duration::from_secs(10), first)
                .await
                .expect("the task that gave way was never polled again")
                .unwrap();
        });
        assert_eq!(*order.lock().unwrap(), ["gave way", "other", "resumed"]);
    }
}

/// A listener that lets anyone in.
fn anonymous() -> Arc<ListenerAccess> {
    Arc::new(ListenerAccess {
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
    })
}

/// Every idle connection holds its task: this is most of what it costs (bench scenario 6
/// measures the whole). tokio puts it in a cell 104 bytes larger, rounded up to 128:
/// at most 280 bytes keeps the cell at 384.
#[tokio::test]
async fn the_connection_task_stays_small() {
    let broker = Arc::new(Broker::new(Default::default(), Instant::now()));
    let access = anonymous();
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let stop = Arc::new(Stop::default());
    let client = || {
        Client::new(
            Some(peer),
            Instant::now(),
            access.clone(),
            PeerInfo::default(),
            &stop,
        )
    };
    // A real TCP stream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener_addr = listener.local_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(listener_addr).await.unwrap();
    let global = Arc::new(tokio::sync::Semaphore::new(1));
    let listener = Arc::new(tokio::sync::Semaphore::new(1));
    let permits = crate::accept::Permits::take(&global, Some(&listener), &broker);
    let permits = permits.expect("a permit");
    // A plain TCP connection's task (which may park), and the same stream served by the
    // loop every other transport's connection runs.
    let unparked = tokio::net::TcpStream::connect(listener_addr).await.unwrap();
    let unparked = serve(
        unparked,
        client(),
        broker.clone(),
        StreamOptions::default(),
        (),
    );
    let size = std::mem::size_of_val(&unparked);
    assert!(size <= 280, "the connection task grew to {size} bytes");
    let task = serve_tcp(stream, client(), broker, permits);
    let size = std::mem::size_of_val(&task);
    assert!(size <= 280, "the TCP connection task grew to {size} bytes");
}

/// A stream that records, in one list shared by several, which of them wrote what first.
struct Logged {
    io: tokio::io::DuplexStream,
    name: &'static str,
    log: Arc<std::sync::Mutex<Vec<(&'static str, u8)>>>,
}

impl Logged {
    fn record(&self, first: Option<u8>) {
        if let Some(b) = first {
            self.log.lock().unwrap().push((self.name, b));
        }
    }
}

impl AsyncRead for Logged {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Logged {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.record(buf.first().copied());
        }
        r
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first = bufs.iter().find_map(|b| b.first().copied());
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.record(first);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A message to one subscriber is written to it before the publisher's PUBACK: the
/// publisher's task gives way once after a turn that woke a few connections
/// (`Yield::Delivering`), so the delivery waits for no write of the publisher's.
#[test]
fn a_delivery_is_written_before_the_publishers_acknowledgement() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let order = log.clone();
    rt.block_on(async move {
        let broker = Arc::new(Broker::new(Default::default(), Instant::now()));
        let access = anonymous();
        let stop = Arc::new(Stop::default());
        let connect = |name: &'static str| {
            let (ours, theirs) = tokio::io::duplex(4096);
            let client = Client::new(
                Some(SocketAddr::from(([127, 0, 0, 1], 1))),
                Instant::now(),
                access.clone(),
                PeerInfo::default(),
                &stop,
            );
            let io = Logged {
                io: theirs,
                name,
                log: log.clone(),
            };
            let task = serve(io, client, broker.clone(), StreamOptions::default(), ());
            tokio::spawn(task);
            ours
        };
        // MQTT 3.1.1 packets, by hand: CONNECT (clean session, client id "s" / "p"),
        // SUBSCRIBE to "t" at QoS 1, PUBLISH "x" to "t" at QoS 1 with packet id 5.
        let hello = |id: u8| {
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, id,
            ]
        };
        let mut buf = [0u8; 64];
        let mut sub = connect("subscriber");
        sub.write_all(&hello(b's')).await.unwrap();
        sub.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(buf[..4], [0x20, 2, 0, 0], "CONNACK");
        sub.write_all(&[0x82, 6, 0, 1, 0, 1, b't', 1])
            .await
            .unwrap();
        sub.read_exact(&mut buf[..5]).await.unwrap();
        assert_eq!(buf[..5], [0x90, 3, 0, 1, 1], "SUBACK");
        let mut publisher = connect("publisher");
        publisher.write_all(&hello(b'p')).await.unwrap();
        publisher.read_exact(&mut buf[..4]).await.unwrap();
        log.lock().unwrap().clear();
        let publish = [0x32, 6, 0, 1, b't', 0, 5, b'x'];
        publisher.write_all(&publish).await.unwrap();
        let (mut got, mut acked) = ([0u8; 8], [0u8; 4]);
        let both = async {
            sub.read_exact(&mut got).await.unwrap();
            publisher.read_exact(&mut acked).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("the delivery and the PUBACK");
        // Sent to the subscriber with a packet id of the broker's own.
        assert_eq!(got[..5], [0x32, 6, 0, 1, b't']);
        assert_eq!(got[7], b'x');
        assert_eq!(acked, [0x40, 2, 0, 5], "PUBACK");
    });
    let order = order.lock().unwrap().clone();
    assert_eq!(order, [("subscriber", 0x32), ("publisher", 0x40)]);
}
