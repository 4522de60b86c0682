//! A session's buffers per subscription (`queue_scope = "subscription"`) and queue
//! priorities: the data structure, with no limits or store records of its own (`queue.rs`
//! decides what goes in and what is dropped).
//!
//! Each buffer belongs to one subscription filter (or to none: messages no subscription of
//! the session matches any more, and the whole session when priorities are used with the
//! session scope). A buffer holds one lane per priority, highest first; a lane is FIFO.
//! Draining takes the highest priority present anywhere, and among the buffers that have it,
//! takes turns (round robin), so one backlog does not starve the others. A topic always maps
//! to the same buffer and lane while the subscriptions stay the same, so order is kept per
//! topic.

use std::collections::VecDeque;

use starling_proto::{QoS, TopicFilter};

use crate::message::Delivery;

/// The buffers of one session. The number of buffers is bounded by the session's
/// subscriptions (plus one without a filter); each lane by its buffer's bound, enforced by
/// the caller.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    bufs: Vec<Buffer>,
    /// Messages in all buffers.
    len: usize,
    /// Bytes (`Message::cost`) in all buffers.
    bytes: usize,
    /// Where the next round of draining starts: the buffer after the last one served.
    next: usize,
}

/// One subscription's buffer.
#[derive(Debug)]
pub(crate) struct Buffer {
    /// The subscription's full filter (`$share/...` included); `None`: no subscription.
    filter: Option<TopicFilter>,
    /// One FIFO per priority, highest priority first; empty lanes are removed.
    lanes: Vec<Lane>,
    len: usize,
    bytes: usize,
    /// Messages dropped from (or refused by) this buffer.
    dropped: u64,
    /// Its subscription is gone: removed once empty.
    orphan: bool,
}

#[derive(Debug)]
struct Lane {
    priority: u8,
    queue: VecDeque<Delivery>,
}

/// What the admin API shows of one buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferView {
    /// The subscription's filter; `None` for messages of no subscription (or the whole
    /// session, with priorities and the session scope).
    pub filter: Option<TopicFilter>,
    /// Messages waiting.
    pub queued: usize,
    /// Their payload and topic bytes.
    pub bytes: usize,
    /// Messages dropped because this buffer (or the session's total) was full.
    pub dropped: u64,
}

impl Buffer {
    fn lowest_priority(&self) -> Option<u8> {
        self.lanes.last().map(|l| l.priority)
    }

    /// Whether another message of `cost` bytes would exceed `messages` or `bytes`. An empty
    /// buffer takes one message whatever its size.
    pub(crate) fn is_full(&self, messages: usize, bytes: usize, cost: usize) -> bool {
        self.len >= messages || (self.len > 0 && self.bytes + cost > bytes)
    }
}

impl Buffers {
    /// Messages in all buffers.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether every buffer is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether another message of `cost` bytes would exceed `messages` or `bytes` in total.
    pub(crate) fn is_full(&self, messages: usize, bytes: usize, cost: usize) -> bool {
        self.len >= messages || (self.len > 0 && self.bytes + cost > bytes)
    }

    /// The index of `filter`'s buffer (a subscription the session has now), added (empty)
    /// if it has none.
    pub(crate) fn index(&mut self, filter: Option<&TopicFilter>) -> usize {
        if let Some(i) = self.bufs.iter().position(|b| b.filter.as_ref() == filter) {
            if let Some(b) = self.bufs.get_mut(i) {
                b.orphan = false;
            }
            return i;
        }
        self.bufs.push(Buffer {
            filter: filter.cloned(),
            lanes: Vec::new(),
            len: 0,
            bytes: 0,
            dropped: 0,
            orphan: false,
        });
        self.bufs.len() - 1
    }

    /// Buffer `i`.
    pub(crate) fn get(&self, i: usize) -> Option<&Buffer> {
        self.bufs.get(i)
    }

    /// Counts a drop against buffer `i`.
    pub(crate) fn count_drop(&mut self, i: usize) {
        if let Some(b) = self.bufs.get_mut(i) {
            b.dropped += 1;
        }
    }

    /// The lowest priority queued in buffer `i`.
    pub(crate) fn lowest_priority(&self, i: usize) -> Option<u8> {
        self.bufs.get(i).and_then(Buffer::lowest_priority)
    }

    /// Where the session's total must give: the buffer holding the lowest priority queued
    /// anywhere, and of those the one with the most messages (the first on a tie), with that
    /// priority.
    pub(crate) fn fullest_lowest(&self) -> Option<(usize, u8)> {
        let mut best: Option<(usize, u8, usize)> = None;
        for (i, b) in self.bufs.iter().enumerate() {
            let Some(p) = b.lowest_priority() else {
                continue;
            };
            let better = match best {
                None => true,
                Some((_, bp, blen)) => p < bp || (p == bp && b.len > blen),
            };
            if better {
                best = Some((i, p, b.len));
            }
        }
        best.map(|(i, p, _)| (i, p))
    }

    /// Appends a delivery of `priority` to buffer `i`, without limits.
    pub(crate) fn push(&mut self, i: usize, priority: u8, d: Delivery) {
        let Some(b) = self.bufs.get_mut(i) else {
            return;
        };
        let cost = d.msg.cost();
        let at = b.lanes.partition_point(|l| l.priority > priority);
        match b.lanes.get_mut(at) {
            Some(lane) if lane.priority == priority => lane.queue.push_back(d),
            _ => {
                let mut queue = VecDeque::new();
                queue.push_back(d);
                b.lanes.insert(at, Lane { priority, queue });
            }
        }
        b.len += 1;
        b.bytes += cost;
        self.len += 1;
        self.bytes += cost;
    }

    /// Takes the oldest delivery of the lowest priority in buffer `i`.
    pub(crate) fn pop_lowest(&mut self, i: usize) -> Option<Delivery> {
        let b = self.bufs.get_mut(i)?;
        let at = b.lanes.len().checked_sub(1)?;
        self.take(i, at)
    }

    /// Takes the front of lane `at` of buffer `i`, removing the lane once empty.
    fn take(&mut self, i: usize, at: usize) -> Option<Delivery> {
        let b = self.bufs.get_mut(i)?;
        let lane = b.lanes.get_mut(at)?;
        let d = lane.queue.pop_front()?;
        if lane.queue.is_empty() {
            b.lanes.remove(at);
        }
        let cost = d.msg.cost();
        b.len -= 1;
        b.bytes -= cost;
        self.len -= 1;
        self.bytes -= cost;
        if b.len == 0 && b.orphan {
            self.remove(i);
        }
        Some(d)
    }

    /// Removes buffer `i`, keeping the turn where it was.
    fn remove(&mut self, i: usize) {
        if i < self.bufs.len() {
            self.bufs.remove(i);
            if self.next > i {
                self.next -= 1;
            }
        }
    }

    /// The next delivery to send: from the highest priority queued, taking turns among the
    /// buffers that have it. A QoS 1/2 message waits while `window_full`; then nothing is
    /// taken (as with the plain queue, whose front waits).
    pub(crate) fn next(&mut self, window_full: bool) -> Option<Delivery> {
        let top = self
            .bufs
            .iter()
            .filter_map(|b| b.lanes.first().map(|l| l.priority))
            .max()?;
        let n = self.bufs.len();
        let i = (0..n).map(|k| (self.next + k) % n).find(|&i| {
            (self.bufs.get(i)).is_some_and(|b| b.lanes.first().is_some_and(|l| l.priority == top))
        })?;
        let front = self.bufs.get(i)?.lanes.first()?.queue.front()?;
        if window_full && front.qos != QoS::AtMostOnce {
            return None;
        }
        self.next = i + 1;
        self.take(i, 0)
    }

    /// `filter`'s subscription is gone: its buffer is removed now if empty, otherwise once
    /// it has drained. (So the buffers never outnumber the subscriptions, plus those still
    /// draining.)
    pub(crate) fn orphan(&mut self, filter: &TopicFilter) {
        let Some(i) = (self.bufs.iter()).position(|b| b.filter.as_ref() == Some(filter)) else {
            return;
        };
        match self.bufs.get_mut(i) {
            Some(b) if b.len == 0 => self.remove(i),
            Some(b) => b.orphan = true,
            None => {}
        }
    }

    /// Takes out every delivery for which `take` is true, in each buffer's order.
    pub(crate) fn extract(&mut self, mut take: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let mut out = Vec::new();
        for b in &mut self.bufs {
            for lane in &mut b.lanes {
                let mut keep = VecDeque::with_capacity(lane.queue.len());
                for d in lane.queue.drain(..) {
                    if take(&d) {
                        let cost = d.msg.cost();
                        b.len -= 1;
                        b.bytes -= cost;
                        self.len -= 1;
                        self.bytes -= cost;
                        out.push(d);
                    } else {
                        keep.push_back(d);
                    }
                }
                lane.queue = keep;
            }
            b.lanes.retain(|l| !l.queue.is_empty());
        }
        self.bufs.retain(|b| b.len > 0 || !b.orphan);
        self.next = 0;
        out
    }

    /// Every buffer as the admin API shows it.
    pub(crate) fn views(&self) -> Vec<BufferView> {
        (self.bufs.iter())
            .map(|b| BufferView {
                filter: b.filter.clone(),
                queued: b.len,
                bytes: b.bytes,
                dropped: b.dropped,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::test_delivery as delivery;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::try_from_str(s).unwrap()
    }

    fn drain(b: &mut Buffers) -> Vec<u8> {
        std::iter::from_fn(|| b.next(false))
            .map(|d| d.msg.payload[0])
            .collect()
    }

    #[test]
    fn draining_takes_turns_and_keeps_order_per_buffer() {
        let mut b = Buffers::default();
        let (x, y) = (b.index(Some(&f("x"))), b.index(Some(&f("y"))));
        for n in 1..=4 {
            b.push(x, 0, delivery(QoS::AtLeastOnce, n));
        }
        for n in 11..=12 {
            b.push(y, 0, delivery(QoS::AtLeastOnce, n));
        }
        assert_eq!((b.len(), b.bytes), (6, 12));
        assert_eq!(drain(&mut b), [1, 11, 2, 12, 3, 4]);
        assert!(b.is_empty());
        assert_eq!(b.bytes, 0);
    }

    #[test]
    fn higher_priorities_go_first_and_lowest_are_dropped_first() {
        let mut b = Buffers::default();
        let (x, y) = (b.index(Some(&f("x"))), b.index(Some(&f("y"))));
        b.push(x, 0, delivery(QoS::AtLeastOnce, 1));
        b.push(x, 5, delivery(QoS::AtLeastOnce, 2));
        b.push(y, 5, delivery(QoS::AtLeastOnce, 3));
        b.push(y, 9, delivery(QoS::AtLeastOnce, 4));
        b.push(x, 0, delivery(QoS::AtLeastOnce, 5));
        assert_eq!(b.lowest_priority(x), Some(0));
        assert_eq!(b.fullest_lowest(), Some((x, 0)));
        assert_eq!(b.pop_lowest(x).map(|d| d.msg.payload[0]), Some(1));
        assert_eq!(b.pop_lowest(y).map(|d| d.msg.payload[0]), Some(3));
        assert_eq!(drain(&mut b), [4, 2, 5]);
    }

    #[test]
    fn the_window_holds_back_qos1_and_extract_keeps_order() {
        let mut b = Buffers::default();
        let x = b.index(None);
        b.push(x, 0, delivery(QoS::AtLeastOnce, 1));
        b.push(x, 0, delivery(QoS::AtMostOnce, 2));
        b.push(x, 0, delivery(QoS::AtLeastOnce, 3));
        assert!(b.next(true).is_none());
        let odd = b.extract(|d| d.msg.payload[0] % 2 == 1);
        assert_eq!(
            odd.iter().map(|d| d.msg.payload[0]).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(b.len(), 1);
        assert_eq!(b.next(true).map(|d| d.msg.payload[0]), Some(2));
        b.count_drop(x);
        let y = b.index(Some(&f("y")));
        b.push(y, 0, delivery(QoS::AtLeastOnce, 4));
        b.orphan(&f("y"));
        assert_eq!(b.views().len(), 2, "kept while it drains");
        assert_eq!(b.next(false).map(|d| d.msg.payload[0]), Some(4));
        assert_eq!(b.views().len(), 1, "removed once drained");
        assert_eq!(b.views()[0].dropped, 1);
    }
}
