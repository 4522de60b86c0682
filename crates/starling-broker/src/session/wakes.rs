//! How often a session's owner is woken for deliveries (`SessionState::woken`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use starling_proto::{ProtocolVersion, QoS};

use super::{Ctx, Session, test_delivery, test_terms};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::persist::Ops;
use crate::wake::Wake;

/// Counts its wake-ups.
#[derive(Debug, Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn attach(s: &Session, epoch: u64, waker: &Arc<Count>) {
    let terms = test_terms();
    assert!(
        s.lock()
            .attach(epoch, waker.clone(), terms, &mut Ops::new(None))
    );
}

/// A burst of deliveries wakes the owner once; once it has looked at the queue, the next
/// delivery wakes it again, even if it took nothing (its window may have been full); a new
/// owner is woken by its first delivery.
#[test]
fn the_owner_is_woken_once_per_look_at_the_queue() {
    let (limits, metrics, hooks) = (Limits::default(), Metrics::default(), Default::default());
    let ctx = Ctx {
        limits: &limits,
        metrics: &metrics,
        hooks: &hooks,
        fan_out: false,
    };
    let s = Session::new("c".into(), ProtocolVersion::V5);
    let first = Arc::new(Count::default());
    attach(&s, 1, &first);
    let deliver = |n: u8| {
        for b in 0..n {
            assert!(s.deliver(test_delivery(QoS::AtMostOnce, b), &ctx, &mut Ops::new(None)));
        }
    };
    deliver(5);
    assert_eq!(first.0.load(Ordering::Relaxed), 1);
    s.lock().take_wake();
    deliver(3);
    assert_eq!(
        first.0.load(Ordering::Relaxed),
        2,
        "woken again after a look"
    );
    deliver(3);
    assert_eq!(first.0.load(Ordering::Relaxed), 2);
    let second = Arc::new(Count::default());
    attach(&s, 2, &second);
    assert_eq!(first.0.load(Ordering::Relaxed), 3, "the old owner is told");
    deliver(1);
    assert_eq!(
        second.0.load(Ordering::Relaxed),
        1,
        "the new owner is woken"
    );
    assert_eq!(s.lock().queued(), 12);
}
