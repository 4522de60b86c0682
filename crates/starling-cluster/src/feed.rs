//! What the state machine tells the rest of its node as it applies entries: a bounded
//! channel of [`Applied`] events. The applier never waits for the reader: when the channel is
//! full the event is dropped and the feed is marked as lagged, and the reader, told so
//! ([`Item::Lagged`]), looks at the whole state instead (everything an event would have said
//! is in it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use crate::state::Owner;

/// Something applying an entry did that the node acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// `client_id` was claimed by `owner`, from `previous`.
    Claimed {
        client_id: String,
        owner: Owner,
        previous: Option<Owner>,
    },
}

/// What the reader gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The next event.
    Applied(Applied),
    /// Events were dropped (the channel was full): read the whole state.
    Lagged,
}

/// The applier's end.
#[derive(Clone, Debug)]
pub struct Sender {
    tx: mpsc::Sender<Applied>,
    lagged: Arc<AtomicBool>,
}

impl Sender {
    /// Sends `event`, or marks the feed as lagged if the channel is full (or the reader gone).
    pub(crate) fn send(&self, event: Applied) {
        if self.tx.try_send(event).is_err() {
            self.lagged.store(true, Ordering::Release);
        }
    }
}

/// The reader's end.
#[derive(Debug)]
pub struct Feed {
    rx: mpsc::Receiver<Applied>,
    lagged: Arc<AtomicBool>,
}

impl Feed {
    /// The next item; `None` once the applier is gone.
    pub async fn next(&mut self) -> Option<Item> {
        if self.lagged.swap(false, Ordering::AcqRel) {
            return Some(Item::Lagged);
        }
        let event = self.rx.recv().await?;
        Some(Item::Applied(event))
    }
}

/// A feed holding at most `capacity` events.
pub fn channel(capacity: usize) -> (Sender, Feed) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let lagged = Arc::new(AtomicBool::new(false));
    (
        Sender {
            tx,
            lagged: lagged.clone(),
        },
        Feed { rx, lagged },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(n: u64) -> Applied {
        let owner = Owner {
            node: 1,
            incarnation: 1,
            epoch: n,
        };
        Applied::Claimed {
            client_id: "c".into(),
            owner,
            previous: None,
        }
    }

    #[tokio::test]
    async fn a_full_feed_says_it_lagged_instead_of_blocking_the_applier() {
        let (tx, mut feed) = channel(2);
        for n in 1..=3 {
            tx.send(claimed(n));
        }
        assert_eq!(feed.next().await, Some(Item::Lagged));
        assert_eq!(feed.next().await, Some(Item::Applied(claimed(1))));
        assert_eq!(feed.next().await, Some(Item::Applied(claimed(2))));
        tx.send(claimed(4));
        assert_eq!(feed.next().await, Some(Item::Applied(claimed(4))));
        drop(tx);
        assert_eq!(feed.next().await, None);
    }
}
