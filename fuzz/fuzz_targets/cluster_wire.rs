//! Fuzz target `cluster_wire`: what a peer node sends, read by `starling_cluster::wire`. The
//! first byte picks the message (modulo 16: each request and reply between nodes), the rest
//! is its body. Invariants: reading answers a value or a refusal, never a panic; a value read
//! writes back to bytes that read to the same value (`wire::reads_stably`, which the unit
//! tests also replay on `corpus/cluster_wire/`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = starling_cluster::wire::reads_stably(data) {
        panic!("{e}");
    }
});
