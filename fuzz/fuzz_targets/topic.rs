//! Fuzz target `topic`: topic name and filter validation and matching. The first byte says
//! where the rest splits into a name and a filter.

#![no_main]

use bytes::Bytes;
use starling_proto::topic::filter_matches;
use starling_proto::{TopicFilter, TopicName};

const LEVELS: usize = 32;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = rest.split_at(usize::from(split).min(rest.len()));
    let name = TopicName::new(Bytes::copy_from_slice(a), LEVELS);
    let filter = TopicFilter::new(Bytes::copy_from_slice(b), LEVELS);

    if let Ok(name) = &name {
        // A valid name is a valid filter (unless it reads as a shared subscription) that
        // matches exactly itself.
        if !name.as_bytes().starts_with(b"$share/") {
            let exact = TopicFilter::new(name.as_shared().clone(), LEVELS)
                .unwrap_or_else(|e| panic!("name {name:?} is not a filter: {e}"));
            assert!(exact.matches(name));
        }
        // `#` and an all-`+` filter of the same depth match every name not starting with `$`.
        assert_eq!(filter_matches(b"#", name.as_bytes()), !name.is_dollar());
        let levels = name.as_bytes().iter().filter(|&&c| c == b'/').count() + 1;
        let plus = vec!["+"; levels].join("/");
        assert_eq!(filter_matches(plus.as_bytes(), name.as_bytes()), !name.is_dollar());
    }
    if let Ok(filter) = &filter {
        assert!(!filter.match_filter().is_empty());
        if let Ok(name) = &name {
            assert_eq!(
                filter.matches(name),
                filter_matches(filter.match_filter(), name.as_bytes())
            );
            if !filter.has_wildcards() {
                assert_eq!(filter.matches(name), filter.match_filter() == name.as_bytes());
            }
        }
    }
});
