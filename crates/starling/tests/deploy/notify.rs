//! `$NOTIFY_SOCKET`: the broker started as systemd starts a `Type=notify` service, with a
//! real datagram socket standing in for systemd.

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::process::Broker;

/// The messages received within `within` (each datagram as one string).
fn receive(socket: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return got;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The next message, within `within`.
fn next(socket: &UnixDatagram, within: Duration) -> String {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {within:?}: {e}"));
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// The next message other than `WATCHDOG=1`.
fn next_state(socket: &UnixDatagram, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let m = next(
            socket,
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        if m != "WATCHDOG=1" {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_listeners_open_then_watchdog_reload_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // 200 ms: a ping every 100 ms.
    let mut broker = Broker::spawn(
        dir.path(),
        "[storage]\ndurability = \"sync\"\n",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    // The first message is READY=1, and by then the MQTT and HTTP listeners accept.
    let first = next(&socket, Duration::from_secs(20));
    assert!(
        first.starts_with("READY=1\nSTATUS=ready: MQTT on "),
        "{first:?}; log:\n{}",
        broker.log()
    );
    assert!(first.contains(&broker.addr.to_string()), "{first}");
    TcpStream::connect(broker.addr).expect("MQTT listener open at READY=1");
    let ready = reqwest::get(format!("http://{}/readyz", broker.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "/readyz at READY=1");
    crate::common::qos0_round_trip(broker.addr, "notify-probe").await;

    // The watchdog keeps coming, about every 100 ms.
    let pings = receive(&socket, Duration::from_millis(1000));
    let n = pings.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!((5..=15).contains(&n), "{n} pings in 1 s: {pings:?}");
    assert!(pings.iter().all(|m| m == "WATCHDOG=1"), "{pings:?}");

    // SIGHUP: RELOADING=1, then READY=1 again.
    broker.signal("HUP");
    assert_eq!(
        next_state(&socket, Duration::from_secs(5)),
        "RELOADING=1\nSTATUS=reloading"
    );
    let again = next_state(&socket, Duration::from_secs(5));
    assert!(again.starts_with("READY=1\n"), "{again:?}");

    // SIGTERM: STOPPING=1, then a clean exit.
    broker.signal("TERM");
    assert_eq!(
        next_state(&socket, Duration::from_secs(5)),
        "STOPPING=1\nSTATUS=shutting down"
    );
    let (status, _) = broker.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", broker.log());
    // Nothing after the exit, not even a ping.
    let after: Vec<String> = receive(&socket, Duration::from_millis(300))
        .into_iter()
        .filter(|m| m != "WATCHDOG=1")
        .collect();
    assert!(after.is_empty(), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_socket_nothing_is_sent_and_a_bad_one_is_only_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::spawn(dir.path(), "", &[("NOTIFY_SOCKET", "relative/notify.sock")]);
    let started = Instant::now();
    while TcpStream::connect(broker.addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "broker did not start: {}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = broker.log();
    assert!(
        log.contains("NOTIFY_SOCKET \"relative/notify.sock\" is neither an absolute path"),
        "{log}"
    );
    broker.signal("TERM");
    let (status, _) = broker.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}
