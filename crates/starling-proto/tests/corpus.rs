//! Replays the `decode` fuzz target's seed corpus (fuzz/corpus/decode/, crashers included)
//! through the same invariant the fuzz target checks, so `cargo test` guards what fuzzing
//! found.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/decode_invariant.rs"]
mod decode_invariant;

use std::path::PathBuf;

#[test]
fn decode_corpus_holds_the_invariant() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 30,
        "seed corpus too small: {}",
        entries.len()
    );
    let (mut packets, mut errors) = (0, 0);
    for path in &entries {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| decode_invariant::check(&data))
            .unwrap_or_else(|_| panic!("invariant failed for {}", path.display()));
        packets += outcome.packets;
        errors += usize::from(outcome.error.is_some());
    }
    // The seeds hold valid and invalid packets alike; both kinds must be exercised.
    assert!(
        packets > 0 && errors > 0,
        "packets {packets}, errors {errors}"
    );
}
