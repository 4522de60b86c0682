//! Broker-wide counters and histograms: lock-free atomics bumped on the hot path, read by
//! `$SYS` and the metrics endpoint. Nothing here allocates or locks after start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One monotonically increasing or current-value counter, alone on its cache line so that
/// connections bumping different counters on different cores do not slow each other down.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one (for gauges), never below zero.
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// Sets the value (for gauges).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram over fixed bucket bounds (integers in the unit the caller chose), lock-free:
/// an observation is two relaxed atomic additions. The count is the sum of the buckets.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending; observations above the last go to the last bucket (+Inf).
    bounds: &'static [u64],
    /// One per bound, and one for +Inf.
    buckets: Box<[Counter]>,
    sum: Counter,
    /// For each bit length of a value (0 to 64), the first bucket a value of that length can
    /// fall in: with bounds at least twice apart, the bucket is that one or the next, found
    /// with one comparison instead of a binary search (per delivery, the search was a
    /// twentieth of the broker's time in fan-out).
    starts: [u8; 65],
}

impl Histogram {
    /// A histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        let mut starts = [0u8; 65];
        for (bits, start) in starts.iter_mut().enumerate() {
            // The smallest value of this bit length.
            let low = if bits == 0 { 0 } else { 1u64 << (bits - 1) };
            *start = u8::try_from(bounds.partition_point(|&b| b < low)).unwrap_or(u8::MAX);
        }
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum: Counter::default(),
            starts,
        }
    }

    /// The bucket `v` falls in: the first whose bound is at least `v` (+Inf, the last, if
    /// none is). Correct for any ascending bounds; one step for bounds twice apart or more.
    pub fn bucket(&self, v: u64) -> usize {
        let bits = (u64::BITS - v.leading_zeros()) as usize;
        let mut i = self.starts.get(bits).map_or(0, |&s| usize::from(s));
        while self.bounds.get(i).is_some_and(|&b| b < v) {
            i += 1;
        }
        i
    }

    /// Records one observation.
    pub fn observe(&self, v: u64) {
        if let Some(b) = self.buckets.get(self.bucket(v)) {
            b.inc();
        }
        self.sum.add(v);
    }

    /// Adds observations counted elsewhere ([`SentTally`]): `counts` per bucket (as
    /// [`Histogram::snapshot`] gives them; extra ones are ignored) and their sum.
    fn add_counts(&self, counts: &[u64], sum: u64) {
        for (b, &n) in self.buckets.iter().zip(counts) {
            if n != 0 {
                b.add(n);
            }
        }
        self.sum.add(sum);
    }

    /// The upper bounds (the +Inf bucket is implied).
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// Observations per bucket (not cumulative), the +Inf bucket last, and their sum.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        (
            self.buckets.iter().map(Counter::get).collect(),
            self.sum.get(),
        )
    }
}

/// Bounds of latency histograms, microseconds: 50 µs to 10 s.
pub const LATENCY_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];
/// What a connection sent while it filled its output once, counted locally and added to the
/// broker-wide metrics at the end ([`SentTally::add_to`]): a fill of a hundred deliveries makes
/// a dozen atomic additions, not seven hundred (in a 1-to-100 fan-out they were a sixth of the
/// broker's time). One tally is for one fill, at one `now`: the latency it keeps for the last
/// arrival time (`last`) is only valid for that `now`.
#[derive(Debug)]
pub struct SentTally<'a> {
    /// The histogram the latencies go to (for its buckets).
    histogram: &'a Histogram,
    /// PUBLISH packets sent, by QoS.
    count: [u64; 3],
    /// Their payload bytes, by QoS.
    payload: [u64; 3],
    /// Publish-to-deliver latency per bucket of [`LATENCY_US`] (+Inf last), and the sum.
    latency: [u64; LATENCY_US.len() + 1],
    latency_sum: u64,
    /// The last arrival time measured, its latency in microseconds and its bucket: the
    /// messages of one read of a publisher share their arrival time (the turn's clock), so a
    /// fill of a burst computes the latency once, not per message.
    last: Option<(Instant, u64, usize)>,
}

impl<'a> SentTally<'a> {
    /// Nothing counted yet, for `m`.
    pub fn new(m: &'a Metrics) -> Self {
        Self {
            histogram: &m.deliver_latency_us,
            count: [0; 3],
            payload: [0; 3],
            latency: [0; LATENCY_US.len() + 1],
            latency_sum: 0,
            last: None,
        }
    }

    /// A PUBLISH of QoS `qos` with `payload` bytes went out at `now`, its message having
    /// arrived at `received` (if known).
    pub fn sent(
        &mut self,
        qos: starling_proto::QoS,
        payload: usize,
        received: Option<Instant>,
        now: Instant,
    ) {
        let q = qos as usize;
        if let (Some(c), Some(p)) = (self.count.get_mut(q), self.payload.get_mut(q)) {
            *c += 1;
            *p += payload as u64;
        }
        let Some(received) = received else {
            return;
        };
        let (waited, bucket) = match self.last {
            Some((at, waited, bucket)) if at == received => (waited, bucket),
            _ => {
                let waited = now.saturating_duration_since(received);
                let waited = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
                let bucket = self.histogram.bucket(waited);
                self.last = Some((received, waited, bucket));
                (waited, bucket)
            }
        };
        if let Some(b) = self.latency.get_mut(bucket) {
            *b += 1;
        }
        self.latency_sum = self.latency_sum.wrapping_add(waited);
    }

    /// PUBLISH packets and payload bytes counted.
    pub fn totals(&self) -> (u64, u64) {
        (self.count.iter().sum(), self.payload.iter().sum())
    }

    /// Adds what was counted to `m`.
    pub fn add_to(&self, m: &Metrics) {
        let (n, _) = self.totals();
        if n == 0 {
            return;
        }
        m.publish_sent.add(n);
        m.messages_sent.add(n);
        for (q, (&c, &p)) in self.count.iter().zip(&self.payload).enumerate() {
            if c != 0
                && let (Some(count), Some(bytes)) = (
                    m.publish_sent_by_qos.0.get(q),
                    m.payload_sent_by_qos.0.get(q),
                )
            {
                count.add(c);
                bytes.add(p);
            }
        }
        m.deliver_latency_us
            .add_counts(&self.latency, self.latency_sum);
    }
}

/// Bounds of the store's batch size histogram, operations.
pub const BATCH_OPS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000];

/// How a client authenticated (or tried to), for the per-method counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// No username, no certificate.
    Anonymous,
    /// Username and password (password file).
    Password,
    /// TLS client certificate.
    Certificate,
    /// MQTT 5 enhanced authentication (SCRAM).
    Enhanced,
}

impl AuthMethod {
    /// Every method, in index order.
    pub const ALL: [AuthMethod; 4] = [
        Self::Anonymous,
        Self::Password,
        Self::Certificate,
        Self::Enhanced,
    ];

    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Password => "password",
            Self::Certificate => "certificate",
            Self::Enhanced => "enhanced",
        }
    }
}

/// Counters per authentication method.
#[derive(Debug, Default)]
pub struct ByMethod([Counter; 4]);

impl ByMethod {
    /// The counter of `m`.
    pub fn of(&self, m: AuthMethod) -> &Counter {
        let [a, p, c, e] = &self.0;
        match m {
            AuthMethod::Anonymous => a,
            AuthMethod::Password => p,
            AuthMethod::Certificate => c,
            AuthMethod::Enhanced => e,
        }
    }
}

/// Counters per QoS (0, 1, 2).
#[derive(Debug, Default)]
pub struct ByQos(pub [Counter; 3]);

impl ByQos {
    /// The counter of QoS `qos`.
    pub fn of(&self, qos: starling_proto::QoS) -> &Counter {
        let [q0, q1, q2] = &self.0;
        match qos {
            starling_proto::QoS::AtMostOnce => q0,
            starling_proto::QoS::AtLeastOnce => q1,
            starling_proto::QoS::ExactlyOnce => q2,
        }
    }
}

/// Counters per protocol level: 3.1, 3.1.1, 5.0.
#[derive(Debug, Default)]
pub struct ByProtocol(pub [Counter; 3]);

impl ByProtocol {
    /// The counter of `v`.
    pub fn of(&self, v: starling_proto::ProtocolVersion) -> &Counter {
        use starling_proto::ProtocolVersion as V;
        let [v31, v311, v5] = &self.0;
        match v {
            V::V31 => v31,
            V::V311 => v311,
            V::V5 => v5,
        }
    }

    /// The label of index `i`.
    pub fn label(i: usize) -> &'static str {
        ["3.1", "3.1.1", "5.0"].get(i).copied().unwrap_or("")
    }
}

/// Counters per reason code (one per possible byte value; most stay 0).
#[derive(Debug)]
pub struct ByReason(Box<[Counter]>);

impl Default for ByReason {
    fn default() -> Self {
        Self((0..256).map(|_| Counter::default()).collect())
    }
}

impl ByReason {
    /// The counter of `reason`.
    pub fn of(&self, reason: starling_proto::ReasonCode) -> Option<&Counter> {
        self.0.get(usize::from(reason as u8))
    }

    /// Every non-zero counter, by reason code byte.
    pub fn nonzero(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0u8..=255).zip(self.0.iter()).filter_map(|(r, c)| {
            let v = c.get();
            (v > 0).then_some((r, v))
        })
    }
}

/// Why connections were closed over their PROXY protocol header, in the order of
/// [`Metrics::proxy_rejected`]: none came (`missing`), it broke the specification
/// (`malformed`), it was too long (`oversize`), it did not arrive in time (`timeout`), it
/// came from an address not trusted to send one (`untrusted`), its version is not the
/// listener's (`wrong_version`), or one came on a listener that expects none (`unexpected`).
pub const PROXY_REJECT_REASONS: [&str; 7] = [
    "missing",
    "malformed",
    "oversize",
    "timeout",
    "untrusted",
    "wrong_version",
    "unexpected",
];

/// Every counter the broker keeps. Names follow mosquitto's `$SYS` tree where one exists.
#[derive(Debug)]
pub struct Metrics {
    /// Clients connected now.
    pub clients_connected: Counter,
    /// Most clients connected at once since start.
    pub clients_maximum: Counter,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Sessions that expired.
    pub sessions_expired: Counter,
    /// Sessions ended because their client id was claimed on another node of the cluster
    /// that did not take them over.
    pub sessions_taken_over_elsewhere: Counter,
    /// Sessions handed over to another node of the cluster that took their client id.
    pub sessions_handed_over: Counter,
    /// Sessions another node of the cluster handed over to this one.
    pub sessions_adopted: Counter,
    /// Packets received.
    pub messages_received: Counter,
    /// Packets sent.
    pub messages_sent: Counter,
    /// PUBLISH packets received.
    pub publish_received: Counter,
    /// PUBLISH packets sent.
    pub publish_sent: Counter,
    /// Messages dropped: queue full, expired, too large for the receiver, or refused.
    pub publish_dropped: Counter,
    /// Of `publish_dropped`: because a session queue was full (with buffers per
    /// subscription: the session's total).
    pub dropped_queue_full: Counter,
    /// Of `publish_dropped`: because one subscription's buffer was full
    /// (`queue_scope = "subscription"`).
    pub dropped_subscription_full: Counter,
    /// Of `publish_dropped`: because the message expired while waiting.
    pub dropped_expired: Counter,
    /// Of `publish_dropped`: because it exceeded the receiver's maximum packet size.
    pub dropped_too_large: Counter,
    /// Of `publish_dropped`: dropped by a plugin's hook.
    pub dropped_by_hook: Counter,
    /// CONNECTs, subscription and unsubscription filters refused by a plugin's hook.
    pub hook_refused: Counter,
    /// Bytes read from clients.
    pub bytes_received: Counter,
    /// Bytes written to clients.
    pub bytes_sent: Counter,
    /// Connection tasks that ended without their connection closing (a panic, or dropped at
    /// shutdown); their sessions were released as if the transport had been lost.
    pub connection_tasks_aborted: Counter,
    /// Idle connections parked (their task ended, their state kept; see the `starling`
    /// crate's `connection/park.rs`).
    pub connections_parked: Counter,
    /// Parked connections resumed in a new task.
    pub connections_resumed: Counter,
    /// Connections closed because of a protocol violation or malformed packet.
    pub protocol_errors: Counter,
    /// Connections refused because `max_connections` was reached.
    pub connections_refused: Counter,
    /// CONNECTs refused with a CONNACK because they exceed a limit: `max_connect_packet_size`,
    /// `max_user_properties` or `max_topic_levels` (the will topic).
    pub connect_limits_exceeded: Counter,
    /// Subscriptions refused because of `max_subscriptions_per_client`.
    pub subscriptions_refused: Counter,
    /// Retained messages refused because of `max_retained_messages`.
    pub retained_refused: Counter,
    /// Clients disconnected for exceeding the broker's Receive Maximum.
    pub receive_maximum_exceeded: Counter,
    /// Times a client's reading was paused by the publish rate limit.
    pub rate_limited: Counter,
    /// Store batches committed.
    pub store_commits: Counter,
    /// Ops written by those batches.
    pub store_ops: Counter,
    /// Store batches that failed to commit (logged, and what waited on them not acknowledged).
    pub store_commit_failures: Counter,
    /// Acknowledgements answered with a failure (or a disconnect) because their commit failed.
    pub store_failures_answered: Counter,
    /// Times a connection stopped reading its client until a commit finished, because the
    /// journal was at its bound (`storage.max_uncommitted_mib`).
    pub store_paused: Counter,
    /// 1 while the store commits, 0 while it is failing (full disk, I/O error) and being
    /// retried; set by the committer.
    pub store_available: Counter,
    /// Store batches refused without being tried, because the store was failing.
    pub store_batches_refused: Counter,
    /// Times the store went from failing to available again without a restart.
    pub store_recoveries: Counter,
    /// Bytes free on the store's filesystem at the last check (with `min_free_bytes` set).
    pub store_free_bytes: Counter,
    /// 1 while free space is below `min_free_bytes` (new QoS 1/2 messages are refused).
    pub store_low_space: Counter,
    /// QoS 1/2 PUBLISHes refused because the store was low on space.
    pub publishes_refused_low_space: Counter,
    /// CONNECTs refused by authentication (bad credentials, anonymous not allowed, will
    /// topic not authorized).
    pub auth_refused: Counter,
    /// Publishes, subscriptions and deliveries refused by the authorizer (ACL).
    pub acl_denied: Counter,
    /// Connections closed because their credentials expired (a token's `exp`).
    pub credentials_expired: Counter,
    /// Connections closed at accept by the per-address connection rate limit.
    pub connections_rate_limited: Counter,
    /// Addresses banned for reconnecting in a tight loop.
    pub addresses_banned: Counter,
    /// Connections closed at accept because their address was banned.
    pub connections_banned: Counter,
    /// Connections closed over their PROXY protocol header, by reason
    /// ([`PROXY_REJECT_REASONS`]).
    pub proxy_rejected: [Counter; 7],
    /// PUBLISH packets received, by QoS.
    pub publish_received_by_qos: ByQos,
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub payload_received_by_qos: ByQos,
    /// PUBLISH packets sent, by QoS (as delivered).
    pub publish_sent_by_qos: ByQos,
    /// Payload bytes of the PUBLISH packets sent, by QoS.
    pub payload_sent_by_qos: ByQos,
    /// Messages published that reached no subscriber.
    pub dropped_no_subscriber: Counter,
    /// CONNECTs refused with a CONNACK, by its reason code.
    pub connects_refused_by_reason: ByReason,
    /// Clients that authenticated, by method.
    pub auth_succeeded: ByMethod,
    /// Clients refused by authentication, by the method they tried.
    pub auth_failed: ByMethod,
    /// Clients connected now, by protocol level.
    pub connected_by_protocol: ByProtocol,
    /// CONNECTs accepted since start, by protocol level.
    pub connects_by_protocol: ByProtocol,
    /// Clients disconnected by an operator (admin API).
    pub clients_kicked: Counter,
    /// Clients disconnected with 0x9C Use another server: this node lost its cluster's
    /// majority.
    pub clients_sent_elsewhere: Counter,
    /// CONNECTs refused because the client id, username or address was banned by an operator.
    pub connects_banned: Counter,
    /// From a PUBLISH being received to its delivery being written for a subscriber,
    /// microseconds (broker-made and restored messages are not counted).
    pub deliver_latency_us: Histogram,
    /// How long a store commit took, microseconds.
    pub store_commit_us: Histogram,
    /// Operations per store commit.
    pub store_batch_ops: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            clients_connected: Counter::default(),
            clients_maximum: Counter::default(),
            connections_total: Counter::default(),
            sessions_expired: Counter::default(),
            sessions_taken_over_elsewhere: Counter::default(),
            sessions_handed_over: Counter::default(),
            sessions_adopted: Counter::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            publish_received: Counter::default(),
            publish_sent: Counter::default(),
            publish_dropped: Counter::default(),
            dropped_queue_full: Counter::default(),
            dropped_subscription_full: Counter::default(),
            dropped_expired: Counter::default(),
            dropped_too_large: Counter::default(),
            dropped_by_hook: Counter::default(),
            hook_refused: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            connection_tasks_aborted: Counter::default(),
            connections_parked: Counter::default(),
            connections_resumed: Counter::default(),
            protocol_errors: Counter::default(),
            connections_refused: Counter::default(),
            connect_limits_exceeded: Counter::default(),
            subscriptions_refused: Counter::default(),
            retained_refused: Counter::default(),
            receive_maximum_exceeded: Counter::default(),
            rate_limited: Counter::default(),
            store_commits: Counter::default(),
            store_ops: Counter::default(),
            store_commit_failures: Counter::default(),
            store_failures_answered: Counter::default(),
            store_paused: Counter::default(),
            store_available: Counter::default(),
            store_batches_refused: Counter::default(),
            store_recoveries: Counter::default(),
            store_free_bytes: Counter::default(),
            store_low_space: Counter::default(),
            publishes_refused_low_space: Counter::default(),
            auth_refused: Counter::default(),
            acl_denied: Counter::default(),
            credentials_expired: Counter::default(),
            connections_rate_limited: Counter::default(),
            addresses_banned: Counter::default(),
            connections_banned: Counter::default(),
            proxy_rejected: Default::default(),
            publish_received_by_qos: ByQos::default(),
            payload_received_by_qos: ByQos::default(),
            publish_sent_by_qos: ByQos::default(),
            payload_sent_by_qos: ByQos::default(),
            dropped_no_subscriber: Counter::default(),
            connects_refused_by_reason: ByReason::default(),
            auth_succeeded: ByMethod::default(),
            auth_failed: ByMethod::default(),
            connected_by_protocol: ByProtocol::default(),
            connects_by_protocol: ByProtocol::default(),
            clients_kicked: Counter::default(),
            clients_sent_elsewhere: Counter::default(),
            connects_banned: Counter::default(),
            deliver_latency_us: Histogram::new(LATENCY_US),
            store_commit_us: Histogram::new(LATENCY_US),
            store_batch_ops: Histogram::new(BATCH_OPS),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use starling_proto::QoS;

    use super::*;

    /// A tally added at once leaves the metrics as the observations one by one would have,
    /// with messages that arrived at the same time (one read) one after another or not.
    #[test]
    fn a_tally_adds_up_as_single_observations_would() {
        let sent = [
            (QoS::AtMostOnce, 10, Some(0)),
            (QoS::AtLeastOnce, 20, Some(50)),
            (QoS::AtLeastOnce, 5, Some(51)),
            (QoS::AtLeastOnce, 3, Some(51)),
            (QoS::ExactlyOnce, 7, None),
            (QoS::AtLeastOnce, 4, Some(51)),
            (QoS::AtMostOnce, 1, Some(20_000_000)),
            (QoS::AtMostOnce, 2, Some(50)),
        ];
        let now = Instant::now() + Duration::from_secs(30);
        let one_by_one = Histogram::new(LATENCY_US);
        let m = Metrics::default();
        let mut tally = SentTally::new(&m);
        assert_eq!(tally.totals(), (0, 0));
        tally.add_to(&m);
        assert_eq!(m.publish_sent.get(), 0);
        for (qos, bytes, waited) in sent {
            let received = waited.map(|us| now - Duration::from_micros(us));
            tally.sent(qos, bytes, received, now);
            if let Some(v) = waited {
                one_by_one.observe(v);
            }
        }
        assert_eq!(tally.totals(), (8, 52));
        tally.add_to(&m);
        assert_eq!((m.publish_sent.get(), m.messages_sent.get()), (8, 8));
        let by_qos = |b: &ByQos| b.0.iter().map(Counter::get).collect::<Vec<_>>();
        assert_eq!(by_qos(&m.publish_sent_by_qos), [3, 4, 1]);
        assert_eq!(by_qos(&m.payload_sent_by_qos), [13, 32, 7]);
        assert_eq!(m.deliver_latency_us.snapshot(), one_by_one.snapshot());
    }

    /// The quick bucket lookup agrees with a binary search, at every bound and either side
    /// of it, for the broker's bounds and for bounds closer than twice apart.
    #[test]
    fn buckets_are_found_as_a_binary_search_finds_them() {
        const CLOSE: &[u64] = &[1, 2, 3, 5, 7, 8, 9, 10, 100, 101, 1 << 40];
        for bounds in [LATENCY_US, BATCH_OPS, CLOSE] {
            let h = Histogram::new(bounds);
            let mut values = vec![0, 1, u64::MAX, u64::MAX - 1];
            for &b in bounds {
                values.extend([b - 1, b, b + 1]);
            }
            values.extend((0..64).flat_map(|k| [(1u64 << k) - 1, 1 << k, (1 << k) + 1]));
            for v in values {
                assert_eq!(
                    h.bucket(v),
                    bounds.partition_point(|&b| b < v),
                    "{v} in {bounds:?}"
                );
            }
        }
    }
}
