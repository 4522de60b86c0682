//! Topic names and topic filters as validated types, filter matching, and shared-subscription
//! parsing (spec 4.7 and 4.8.2).
//!
//! Both types wrap `Bytes` so a topic decoded from a packet is a slice of the read buffer, not a
//! copy. Validation happens once, at construction; matching works on bytes and never allocates.

use bytes::Bytes;

/// Longest topic name or filter: a UTF-8 string field holds at most 65,535 bytes.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty topic name or filter (MQTT-4.7.3-1).
    #[error("empty topic")]
    Empty,
    /// Longer than 65,535 bytes.
    #[error("topic longer than 65535 bytes")]
    TooLong,
    /// Not valid UTF-8.
    #[error("topic is not valid UTF-8")]
    InvalidUtf8,
    /// Contains U+0000 (MQTT-4.7.3-2).
    #[error("topic contains U+0000")]
    NullCharacter,
    /// `+` or `#` in a topic name (MQTT-3.3.2-2).
    #[error("wildcard in a topic name")]
    WildcardInName,
    /// A wildcard that does not occupy a whole level, or `#` that is not last (MQTT-4.7.1-1/2).
    #[error("wildcard not alone in its level, or '#' not last")]
    InvalidWildcard,
    /// More levels than the receiver allows.
    #[error("more than {0} topic levels")]
    TooManyLevels(usize),
    /// `$share/` with an empty group or filter, or a group containing `+` or `#`
    /// (MQTT-4.8.2-1, -2).
    #[error("invalid shared subscription")]
    InvalidShare,
}

fn check_common(bytes: &[u8], max_levels: usize) -> Result<&str, TopicError> {
    if bytes.is_empty() {
        return Err(TopicError::Empty);
    }
    if bytes.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| TopicError::InvalidUtf8)?;
    if bytes.contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    // Levels = separators + 1; counted without splitting so a hostile topic costs O(n).
    let levels = bytes.iter().filter(|&&b| b == b'/').count() + 1;
    if levels > max_levels {
        return Err(TopicError::TooManyLevels(max_levels));
    }
    Ok(s)
}

/// Checks a topic name: non-empty, UTF-8 without U+0000, no wildcards, at most `max_levels`.
pub fn validate_topic_name(bytes: &[u8], max_levels: usize) -> Result<(), TopicError> {
    check_common(bytes, max_levels)?;
    if bytes.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter: like a name, but `+` and `#` allowed when each fills a whole level
/// and `#` is last; a `$share/{group}/{filter}` needs a non-empty group without wildcards and
/// a valid non-empty filter.
pub fn validate_topic_filter(bytes: &[u8], max_levels: usize) -> Result<(), TopicError> {
    check_common(bytes, max_levels)?;
    let filter = match split_share(bytes) {
        Some(Ok((_, filter))) => filter,
        Some(Err(e)) => return Err(e),
        None => bytes,
    };
    check_wildcards(filter)
}

fn check_wildcards(filter: &[u8]) -> Result<(), TopicError> {
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let has_plus = level.contains(&b'+');
        let has_hash = level.contains(&b'#');
        if (has_plus || has_hash) && level.len() != 1 {
            return Err(TopicError::InvalidWildcard);
        }
        if has_hash && levels.peek().is_some() {
            return Err(TopicError::InvalidWildcard);
        }
    }
    Ok(())
}

/// `(group, filter)` of a shared subscription.
type ShareParts<'a> = (&'a [u8], &'a [u8]);

/// Splits `$share/{group}/{filter}`; `None` when the filter is not shared.
fn split_share(bytes: &[u8]) -> Option<Result<ShareParts<'_>, TopicError>> {
    let rest = bytes.strip_prefix(b"$share/")?;
    let mut parts = rest.splitn(2, |&b| b == b'/');
    let (Some(group), Some(filter)) = (parts.next(), parts.next()) else {
        return Some(Err(TopicError::InvalidShare));
    };
    if group.is_empty() || filter.is_empty() || group.iter().any(|&b| b == b'+' || b == b'#') {
        return Some(Err(TopicError::InvalidShare));
    }
    Some(Ok((group, filter)))
}

/// What a topic name and a topic filter have in common: validated UTF-8 bytes, made from a
/// string, read as bytes or as `&str` (a filter's bytes include a `$share/{group}/` prefix).
macro_rules! validated_bytes {
    ($name:ident) => {
        impl $name {
            /// Validates a string (no level limit beyond the length limit).
            pub fn try_from_str(s: &str) -> Result<Self, TopicError> {
                Self::new(Bytes::copy_from_slice(s.as_bytes()), usize::MAX)
            }

            /// The bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// The shared bytes.
            pub fn as_shared(&self) -> &Bytes {
                &self.0
            }

            /// As `&str`: the bytes were validated as UTF-8 when made.
            pub fn as_str(&self) -> &str {
                std::str::from_utf8(&self.0).unwrap_or_default()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

validated_bytes!(TopicName);
validated_bytes!(TopicFilter);

/// A validated topic name. May be empty only when made by [`TopicName::empty`], for an MQTT 5
/// PUBLISH whose topic is carried by a topic alias.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(Bytes);

impl TopicName {
    /// Validates `bytes` as a topic name with at most `max_levels` levels.
    pub fn new(bytes: Bytes, max_levels: usize) -> Result<Self, TopicError> {
        validate_topic_name(&bytes, max_levels)?;
        Ok(Self(bytes))
    }

    /// The empty topic name of a PUBLISH that uses a topic alias.
    pub fn empty() -> Self {
        Self(Bytes::new())
    }

    /// The same name in an allocation of its own: a name sliced from a read buffer keeps the
    /// whole buffer alive for as long as it lives, which a name kept for long must not do.
    #[must_use]
    pub fn detached(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// True for the empty name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for names starting with `$` (e.g. `$SYS/...`), which a leading wildcard never
    /// matches (MQTT-4.7.2-1).
    pub fn is_dollar(&self) -> bool {
        self.0.first() == Some(&b'$')
    }
}

/// A validated topic filter, possibly a shared subscription `$share/{group}/{filter}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Bytes);

impl TopicFilter {
    /// Validates `bytes` as a topic filter with at most `max_levels` levels.
    pub fn new(bytes: Bytes, max_levels: usize) -> Result<Self, TopicError> {
        validate_topic_filter(&bytes, max_levels)?;
        Ok(Self(bytes))
    }

    /// The same filter in an allocation of its own: a filter sliced from a read buffer keeps
    /// the whole buffer alive for as long as it lives, which a subscription must not do.
    #[must_use]
    pub fn detached(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// The share group name, for a `$share/{group}/{filter}` subscription.
    pub fn share_group(&self) -> Option<&str> {
        match split_share(&self.0) {
            Some(Ok((group, _))) => std::str::from_utf8(group).ok(),
            _ => None,
        }
    }

    /// The filter that is matched against topic names: without the `$share/{group}/` prefix.
    pub fn match_filter(&self) -> &[u8] {
        match split_share(&self.0) {
            Some(Ok((_, filter))) => filter,
            _ => &self.0,
        }
    }

    /// True when the (matched part of the) filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.match_filter().iter().any(|&b| b == b'+' || b == b'#')
    }

    /// Whether this filter matches `topic` (spec 4.7), `$share` prefix ignored.
    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(self.match_filter(), topic.as_bytes())
    }
}

/// Whether a (valid, unshared) filter matches a (valid) topic name. `+` matches one level,
/// `#` the parent level and any number of levels below; a wildcard in the first level does not
/// match a topic starting with `$` (MQTT-4.7.2-1). Iterative, allocation-free.
pub fn filter_matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f_levels = filter.split(|&b| b == b'/');
    let mut t_levels = topic.split(|&b| b == b'/');
    loop {
        match (f_levels.next(), t_levels.next()) {
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::try_from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn names() {
        assert!(TopicName::try_from_str("a/b/c").is_ok());
        assert!(TopicName::try_from_str("/").is_ok());
        assert!(TopicName::try_from_str("a//b").is_ok());
        assert_eq!(TopicName::try_from_str(""), Err(TopicError::Empty));
        assert_eq!(
            TopicName::try_from_str("a/+"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            TopicName::try_from_str("a#"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            TopicName::try_from_str("a\0b"),
            Err(TopicError::NullCharacter)
        );
        assert_eq!(
            TopicName::new(Bytes::from_static(&[b'a', 0xC3]), 10),
            Err(TopicError::InvalidUtf8)
        );
        // An encoded surrogate (U+D800) is not UTF-8.
        assert_eq!(
            TopicName::new(Bytes::from_static(&[0xED, 0xA0, 0x80]), 10),
            Err(TopicError::InvalidUtf8)
        );
        assert_eq!(
            TopicName::new(Bytes::from_static(b"a/b/c"), 2),
            Err(TopicError::TooManyLevels(2))
        );
        let long = vec![b'a'; MAX_TOPIC_LEN + 1];
        assert_eq!(
            TopicName::new(Bytes::from(long), 10),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/+",
            "a//#",
            "$SYS/#",
            "$share/g/a/#",
        ] {
            assert!(TopicFilter::try_from_str(ok).is_ok(), "{ok}");
        }
        for (bad, err) in [
            ("", TopicError::Empty),
            ("a/#/b", TopicError::InvalidWildcard),
            ("a/b+", TopicError::InvalidWildcard),
            ("a/b#", TopicError::InvalidWildcard),
            ("+a", TopicError::InvalidWildcard),
            ("##", TopicError::InvalidWildcard),
            ("$share/", TopicError::InvalidShare),
            ("$share//a", TopicError::InvalidShare),
            ("$share/g", TopicError::InvalidShare),
            ("$share/g/", TopicError::InvalidShare),
            ("$share/g+/a", TopicError::InvalidShare),
            ("$share/#/a", TopicError::InvalidShare),
            ("$share/g/a/#/b", TopicError::InvalidWildcard),
        ] {
            assert_eq!(TopicFilter::try_from_str(bad), Err(err), "{bad}");
        }
    }

    #[test]
    fn shared() {
        let f = filter("$share/grp/a/+/c");
        assert_eq!(f.share_group(), Some("grp"));
        assert_eq!(f.match_filter(), b"a/+/c");
        assert!(f.matches(&name("a/b/c")));
        assert!(f.has_wildcards());
        let plain = filter("a/b");
        assert_eq!(plain.share_group(), None);
        assert!(!plain.has_wildcards());
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "/", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("/+", "/a", true),
            ("+", "", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
        ];
        for &(f, t, expected) in cases {
            assert_eq!(
                filter_matches(f.as_bytes(), t.as_bytes()),
                expected,
                "{f} ~ {t}"
            );
        }
    }

    #[test]
    fn many_levels_is_linear_not_recursive() {
        let topic = "/".repeat(65_000);
        assert_eq!(
            TopicName::new(Bytes::from(topic.clone()), 128),
            Err(TopicError::TooManyLevels(128))
        );
        assert!(filter_matches(b"#", topic.as_bytes()));
    }
}
