//! Fuzz target `decode`: the first byte picks the protocol version, the rest is decoded packet
//! after packet; every decoded packet must re-encode to bytes that decode to the same packet.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/starling-proto/tests/support/decode_invariant.rs"]
mod decode_invariant;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    decode_invariant::check(data);
});
