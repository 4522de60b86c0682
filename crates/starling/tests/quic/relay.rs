//! A lossy UDP relay on 127.0.0.1 between one QUIC client and the broker: it drops a share of
//! the datagrams each way and delays some past the next one (reordering them), and QoS 1
//! messages published and received through it must all arrive, in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mqtt5::{QoS, SubscribeOptions};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::common::XorShift;
use super::*;

/// How long a datagram held back for reordering waits at most for a later one to overtake it.
const HOLD: Duration = Duration::from_millis(15);

/// A running relay; stopped when dropped.
pub(crate) struct Relay {
    /// Where the client connects.
    pub(crate) addr: SocketAddr,
    pub(crate) counts: Arc<Counts>,
    task: JoinHandle<()>,
}

/// Datagrams the relay dropped, held back, and sent on (both ways).
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) dropped: AtomicUsize,
    pub(crate) reordered: AtomicUsize,
    pub(crate) forwarded: AtomicUsize,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One direction's faults: a deterministic coin, and at most one datagram held back.
struct Faults {
    rng: XorShift,
    drop_percent: usize,
    reorder_percent: usize,
    held: Option<(Vec<u8>, Instant)>,
}

impl Faults {
    /// What to send now for `datagram`, in order: nothing (dropped or held), it, or it and
    /// then the one held back before it.
    fn pass(&mut self, datagram: &[u8], relay: &Counts) -> Vec<Vec<u8>> {
        if self.rng.chance(self.drop_percent) {
            relay.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        if self.held.is_none() && self.rng.chance(self.reorder_percent) {
            relay.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some((datagram.to_vec(), Instant::now() + HOLD));
            return Vec::new();
        }
        let mut out = vec![datagram.to_vec()];
        out.extend(self.held.take().map(|(d, _)| d));
        out
    }

    fn due(&self) -> Option<Instant> {
        self.held.as_ref().map(|(_, at)| *at)
    }
}

/// Starts a relay to `server` that drops `drop_percent` % of the datagrams each way and
/// holds back `reorder_percent` %.
pub(crate) async fn start_relay(
    server: SocketAddr,
    drop_percent: usize,
    reorder_percent: usize,
    seed: u64,
) -> Relay {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let counters = counts.clone();
    let faults = |seed| Faults {
        rng: XorShift::new(seed),
        drop_percent,
        reorder_percent,
        held: None,
    };
    let (mut up, mut down) = (faults(seed), faults(seed ^ 0xdead_beef));
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut buf_up = vec![0u8; 65536];
        let mut buf_down = vec![0u8; 65536];
        let far = || Instant::now() + Duration::from_secs(3600);
        loop {
            let due = [up.due(), down.due()].into_iter().flatten().min();
            tokio::select! {
                r = front.recv_from(&mut buf_up) => {
                    let Ok((n, from)) = r else { continue };
                    client = Some(from);
                    for d in up.pass(&buf_up[..n], &counters) {
                        counters.forwarded.fetch_add(1, Ordering::Relaxed);
                        let _ = back.send(&d).await;
                    }
                }
                r = back.recv(&mut buf_down) => {
                    let (Ok(n), Some(to)) = (r, client) else { continue };
                    for d in down.pass(&buf_down[..n], &counters) {
                        counters.forwarded.fetch_add(1, Ordering::Relaxed);
                        let _ = front.send_to(&d, to).await;
                    }
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(far)) => {
                    // A held datagram nothing overtook in time: sent late.
                    let now = Instant::now();
                    if up.due().is_some_and(|t| t <= now)
                        && let Some((d, _)) = up.held.take()
                    {
                        let _ = back.send(&d).await;
                    }
                    if down.due().is_some_and(|t| t <= now)
                        && let (Some((d, _)), Some(to)) = (down.held.take(), client)
                    {
                        let _ = front.send_to(&d, to).await;
                    }
                }
            }
        }
    });
    Relay { addr, counts, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_qos1_message_is_lost_through_a_lossy_reordering_path() {
    const MESSAGES: usize = 200;
    let s = start(|_, _| {}).await;
    let sub_relay = start_relay(s.quic, 5, 5, 1).await;
    let pub_relay = start_relay(s.quic, 5, 5, 2).await;

    let sub = mqtt5_client("lossy-sub", &s.pki).await;
    timeout(Duration::from_secs(20), sub.connect(&url(sub_relay.addr)))
        .await
        .expect("connected through the relay in time")
        .unwrap();
    let (cb, mut rx) = inbox();
    let options = SubscribeOptions {
        qos: QoS::AtLeastOnce,
        ..SubscribeOptions::default()
    };
    sub.subscribe_with_options("lossy/#", options, cb)
        .await
        .unwrap();
    let publisher = mqtt5_client("lossy-pub", &s.pki).await;
    timeout(
        Duration::from_secs(20),
        publisher.connect(&url(pub_relay.addr)),
    )
    .await
    .expect("connected through the relay in time")
    .unwrap();

    let publishing = async {
        for i in 0..MESSAGES {
            let sent = publisher
                .publish_qos1("lossy/t", i.to_string().into_bytes())
                .await
                .unwrap();
            assert!(
                matches!(sent, mqtt5::PublishResult::Sent(_)),
                "message {i} acknowledged on the live connection"
            );
        }
    };
    timeout(Duration::from_secs(40), publishing)
        .await
        .expect("every publish acknowledged in time");
    let mut got = Vec::with_capacity(MESSAGES);
    while got.len() < MESSAGES {
        let m = next(&mut rx, Duration::from_secs(20)).await;
        got.push(
            String::from_utf8(m.payload)
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        );
    }
    assert_eq!(
        got,
        (0..MESSAGES).collect::<Vec<_>>(),
        "every message once, in order"
    );
    for r in [&sub_relay, &pub_relay] {
        let dropped = r.counts.dropped.load(Ordering::Relaxed);
        let reordered = r.counts.reordered.load(Ordering::Relaxed);
        assert!(
            dropped > 0 && reordered > 0,
            "the path was lossy: {dropped} dropped, {reordered} reordered of {}",
            r.counts.forwarded.load(Ordering::Relaxed)
        );
    }
    publisher.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
    s.server.shutdown().await;
}
