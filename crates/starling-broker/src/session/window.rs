//! The outbound inflight window of a session: QoS 1/2 messages sent and not yet fully
//! acknowledged, in send order, and the packet identifiers they use.
//!
//! Packet identifiers are unique within the window. Allocating one must skip identifiers
//! still in use; with a window of hundreds of messages a scan per allocation dominated the
//! delivery path, so once the window holds more than [`INDEX_FROM`] messages a bitmap of
//! used identifiers (8 KiB) is kept beside it, dropped again when the window empties or the
//! session goes offline. Small windows, and offline sessions, cost nothing extra.

use std::collections::VecDeque;
use std::ops::Deref;

use super::Inflight;

/// Window length above which used identifiers are indexed.
const INDEX_FROM: usize = 32;

/// One bit per packet identifier.
type IdBits = [u64; 1024];

/// The inflight window. Reads go through `Deref` to the queue; changes go through the
/// methods, which keep the identifier index true.
#[derive(Debug, Default)]
pub struct Window {
    entries: VecDeque<Inflight>,
    used: Option<Box<IdBits>>,
}

fn bit(id: u16) -> (usize, u64) {
    (usize::from(id >> 6), 1u64 << (id & 63))
}

/// Sets or clears `id`'s bit (the word index is below 1,024 for every `u16`).
fn mark(bits: &mut IdBits, id: u16, used: bool) {
    let (w, b) = bit(id);
    if let Some(word) = bits.get_mut(w) {
        if used {
            *word |= b;
        } else {
            *word &= !b;
        }
    }
}

impl Deref for Window {
    type Target = VecDeque<Inflight>;
    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl Window {
    /// Whether a message in the window uses `id`.
    pub fn contains(&self, id: u16) -> bool {
        match &self.used {
            Some(bits) => {
                let (w, b) = bit(id);
                bits.get(w).is_some_and(|word| word & b != 0)
            }
            None => self.entries.iter().any(|f| f.packet_id == id),
        }
    }

    /// Position of the message using `id`. Acknowledgements usually arrive in send order,
    /// so the front is looked at first.
    pub fn position(&self, id: u16) -> Option<usize> {
        if self.used.is_some() && !self.contains(id) {
            return None;
        }
        self.entries.iter().position(|f| f.packet_id == id)
    }

    /// Adds a message sent last. Its packet id must not be in use (see [`Window::contains`]).
    pub fn push_back(&mut self, f: Inflight) {
        debug_assert!(
            !self.contains(f.packet_id),
            "packet id {} reused",
            f.packet_id
        );
        if let Some(bits) = &mut self.used {
            mark(bits, f.packet_id, true);
        } else if self.entries.len() >= INDEX_FROM {
            let mut bits: Box<IdBits> = Box::new([0; 1024]);
            for e in self.entries.iter().chain(std::iter::once(&f)) {
                mark(&mut bits, e.packet_id, true);
            }
            self.used = Some(bits);
        }
        self.entries.push_back(f);
    }

    /// Removes and returns the message at `i`.
    pub fn remove(&mut self, i: usize) -> Option<Inflight> {
        let f = self.entries.remove(i)?;
        if self.entries.is_empty() {
            self.used = None;
        } else if let Some(bits) = &mut self.used {
            mark(bits, f.packet_id, false);
        }
        Some(f)
    }

    /// The message at `i`, to change its phase.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Inflight> {
        self.entries.get_mut(i)
    }

    /// Drops the identifier index. Identifiers are allocated and acknowledgements arrive only
    /// while a connection owns the session, so an offline session does not keep 8 KiB for it;
    /// the next message sent rebuilds it.
    pub fn release_index(&mut self) {
        self.used = None;
    }

    /// Empties the window.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.used = None;
    }

    /// Removes the messages `take` selects, in order, keeping the rest in order.
    pub fn extract(&mut self, mut take: impl FnMut(&Inflight) -> bool) -> Vec<Inflight> {
        let (taken, kept): (Vec<_>, Vec<_>) = self.entries.drain(..).partition(|f| take(f));
        self.clear();
        for f in kept {
            self.push_back(f);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;
    use starling_proto::{QoS, TopicName};

    use crate::message::{Delivery, Message};
    use crate::session::Phase;

    fn entry(packet_id: u16) -> Inflight {
        let msg = Message::internal(
            TopicName::try_from_str("t").unwrap(),
            Bytes::from_static(b"x"),
            false,
        );
        Inflight {
            packet_id,
            delivery: Delivery::new(Arc::new(msg), QoS::AtLeastOnce, false),
            phase: Phase::Published,
        }
    }

    /// The index agrees with a scan as the window grows past the threshold, shrinks out of
    /// order and empties.
    #[test]
    fn index_agrees_with_the_entries() {
        let mut w = Window::default();
        let ids: Vec<u16> = (0..200u16)
            .map(|i| i.wrapping_mul(331).wrapping_add(7))
            .collect();
        let check = |w: &Window| {
            for id in 0..2000u16 {
                let scan = w.iter().position(|f| f.packet_id == id);
                assert_eq!(w.position(id), scan, "id {id}");
                assert_eq!(w.contains(id), scan.is_some(), "id {id}");
            }
        };
        for (n, &id) in ids.iter().enumerate() {
            w.push_back(entry(id));
            if n % 31 == 0 {
                check(&w);
            }
        }
        assert!(w.used.is_some(), "indexed above the threshold");
        check(&w);
        // Remove every third from the middle, then the rest from the front.
        let mut i = 0;
        while i < w.len() {
            w.remove(i);
            i += 2;
        }
        check(&w);
        w.release_index();
        check(&w);
        w.push_back(entry(60_000));
        assert!(w.used.is_some(), "rebuilt by the next message sent");
        check(&w);
        let taken = w.extract(|f| f.packet_id % 2 == 0);
        assert!(taken.iter().all(|f| f.packet_id % 2 == 0));
        assert!(w.iter().all(|f| f.packet_id % 2 == 1));
        check(&w);
        while !w.is_empty() {
            w.remove(0);
        }
        assert!(w.used.is_none(), "index dropped when empty");
        check(&w);
    }
}
