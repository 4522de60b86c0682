//! Fuzz target `proxy_header`: `starling_proto::proxy::parse` on arbitrary bytes. The first
//! byte picks the accepted versions (modulo 3: v1, v2, any), the rest is the connection's
//! first bytes. Invariants: a complete header is no longer than the input nor the bound of
//! the accepted versions, and parsing exactly its bytes gives the same header; every strict
//! prefix of it asks for more bytes; "more bytes" is only ever asked below the bound (so a
//! reader holding `max_len` bytes never waits for a header it cannot hold).

#![no_main]

use starling_proto::proxy::{max_len, parse, Versions};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let versions = match pick % 3 {
        0 => Versions::V1,
        1 => Versions::V2,
        _ => Versions::Any,
    };
    match parse(input, versions) {
        Ok(Some((header, len))) => {
            assert!(len <= input.len() && len <= max_len(versions));
            assert_eq!(parse(&input[..len], versions), Ok(Some((header, len))));
            for k in 0..len {
                assert_eq!(parse(&input[..k], versions), Ok(None), "prefix {k} of {len}");
            }
        }
        Ok(None) => assert!(input.len() < max_len(versions)),
        Err(_) => {}
    }
});
