//! Deletions of message records within one redb transaction, gathered per session and made at
//! the end of the batch as one ordered scan of each session's key range, rather than one
//! B-tree descent per record. A full offline queue makes a deletion for every message it
//! takes in (its oldest goes), so under churn half of a batch's ops are deletions, of runs of
//! consecutive records of the same few sessions (`bench/RESULTS.md`, "Mixed load").
//!
//! Deferring a deletion never changes the result: a deletion commutes with every op on other
//! keys, and [`Doomed`] is asked before each op that could touch a gathered key (a put of the
//! same key makes the deletions of its session happen first; a phase change of a doomed
//! record is dropped, as it would have found nothing).

use std::collections::{BTreeSet, HashMap};

use redb::Table;

use crate::bodies::{BodyIndex, WriteResult, body_of};
use crate::mix::BuildMix;
use crate::pace::Pace;

/// Sequences to delete, by session number.
#[derive(Debug, Default)]
pub(crate) struct Doomed(HashMap<u64, BTreeSet<u64>, BuildMix>);

/// The tables and index a deletion changes.
pub(crate) struct Tables<'a, 't> {
    pub(crate) messages: &'a mut Table<'t, (u64, u64), &'static [u8]>,
    pub(crate) bodies: &'a mut Table<'t, u64, &'static [u8]>,
    pub(crate) index: &'a mut BodyIndex,
}

impl Doomed {
    /// Gathers the deletion of record `seq` of session `n`.
    pub(crate) fn add(&mut self, n: u64, seq: u64) {
        self.0.entry(n).or_default().insert(seq);
    }

    /// Whether record `seq` of session `n` is to be deleted.
    pub(crate) fn contains(&self, n: u64, seq: u64) -> bool {
        self.0.get(&n).is_some_and(|s| s.contains(&seq))
    }

    /// Forgets the deletions of session `n` (its whole range is being deleted).
    pub(crate) fn forget(&mut self, n: u64) {
        self.0.remove(&n);
    }

    /// Makes the gathered deletions of session `n` now.
    pub(crate) fn flush(&mut self, n: u64, t: &mut Tables<'_, '_>) -> WriteResult<()> {
        match self.0.remove(&n) {
            Some(seqs) => delete(n, &seqs, t),
            None => Ok(()),
        }
    }

    /// Makes every gathered deletion, counting them in `pace`.
    pub(crate) fn flush_all(&mut self, t: &mut Tables<'_, '_>, pace: &mut Pace) -> WriteResult<()> {
        for (n, seqs) in std::mem::take(&mut self.0) {
            delete(n, &seqs, t)?;
            pace.done(seqs.len());
        }
        Ok(())
    }
}

/// Deletes records `seqs` of session `n`, in one scan from the first to the last where they
/// are most of that range, and releases the shared payloads they referred to.
fn delete(n: u64, seqs: &BTreeSet<u64>, t: &mut Tables<'_, '_>) -> WriteResult<()> {
    let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
        return Ok(());
    };
    let mut gone = Vec::new();
    // Sequences far apart (a record acknowledged out of order among many that stay): one
    // descent each rather than a scan over what stays.
    let span = last.saturating_sub(first).saturating_add(1);
    if span / 4 > seqs.len() as u64 {
        for &seq in seqs {
            if let Some(old) = t.messages.remove((n, seq))? {
                gone.extend(body_of(old.value()));
            }
        }
        for body in gone {
            t.index.release(body, t.bodies)?;
        }
        return Ok(());
    }
    t.messages.retain_in((n, first)..=(n, last), |k, v| {
        if seqs.contains(&k.1) {
            gone.extend(body_of(v));
            false
        } else {
            true
        }
    })?;
    for body in gone {
        t.index.release(body, t.bodies)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{MemoryStore, MessagePhase, MessageRecord, Op, RedbStore, SharedPayload, Store};

    /// A small deterministic generator (xorshift), so a failure names its seed.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn op(rng: &mut Rng, next_seq: &mut [u64; 3]) -> Op {
        let c = rng.below(3) as usize;
        let id: crate::ClientId = ["a", "b", "c"][c].into();
        // Mostly what a queue does (put at the back, delete from the front), some anywhere.
        let seq = match rng.below(3) {
            0 => rng.below(next_seq[c] + 2),
            _ => next_seq[c].saturating_sub(rng.below(12)),
        };
        match rng.below(20) {
            0 => Op::PutSession(id, crate::fixtures::session()),
            1 => Op::DeleteSession(id),
            2..=8 => {
                next_seq[c] += 1;
                let key = rng.below(4);
                let payload = (key > 0).then(|| SharedPayload {
                    key,
                    bytes: vec![key as u8; 100].into(),
                });
                let s = if rng.below(8) == 0 { seq } else { next_seq[c] };
                Op::PutMessage(
                    id,
                    s,
                    MessageRecord {
                        packet: vec![s as u8; 5],
                        payload,
                        expires_at_ms: None,
                        phase: MessagePhase::Queued,
                        packet_id: 0,
                    },
                )
            }
            9..=15 => Op::DeleteMessage(id, seq),
            _ => Op::SetPhase(id, seq, MessagePhase::Published, rng.below(100) as u16 + 1),
        }
    }

    /// Batches of random queue work leave the redb store (deletions deferred and scanned,
    /// with and without pacing) exactly as the in-memory reference (every op in order), after every batch and after a
    /// reopen.
    #[test]
    fn deferred_deletions_give_the_same_store() {
        for seed in 1..=40u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut redb = RedbStore::open(dir.path()).unwrap();
            // Half the seeds yield every few operations: pacing changes nothing written.
            if seed % 2 == 0 {
                redb.set_yield_every(1 + seed as usize % 7);
            }
            let mem = MemoryStore::new();
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut next_seq = [0u64; 3];
            for batch in 0..30 {
                let len = 1 + rng.below(40) as usize;
                let ops: Vec<Op> = (0..len).map(|_| op(&mut rng, &mut next_seq)).collect();
                redb.apply(&ops, true).unwrap();
                mem.apply(&ops, true).unwrap();
                assert_eq!(
                    redb.load(false).unwrap(),
                    mem.load(false).unwrap(),
                    "seed {seed}, batch {batch}: {ops:?}"
                );
            }
            redb.reopen().unwrap();
            assert_eq!(redb.load(false).unwrap(), mem.load(false).unwrap());
        }
    }
}
