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

/// Every idle connection holds its task: this is most of what it costs (bench scenario 6
/// measures the whole). tokio puts it in a cell 104 bytes larger, rounded up to 128:
/// at most 280 bytes keeps the cell at 384.
#[tokio::test]
async fn the_connection_task_stays_small() {
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
