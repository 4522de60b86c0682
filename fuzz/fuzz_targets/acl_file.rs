//! Fuzz target `acl_file`: `AclFile::parse` on arbitrary text, then access checks. The input
//! is `ACL text \0 client id \x01 username \x01 topic-or-filter`. Invariants:
//! - subscribing to a topic name (no wildcards) is allowed exactly when reading it is (this
//!   also compares the rule tries, which answer reads, with the linear walk, which answers
//!   subscriptions);
//! - `+` and `#` in a client id or username never act as wildcards: replacing them with a
//!   character the topic does not contain gives the same answers (CVE-2017-7650).

#![no_main]

use starling_auth::acl::{AclFile, Check};
use starling_auth::Client;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (acl_bytes, query) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(acl) = AclFile::parse(&String::from_utf8_lossy(acl_bytes)) else {
        return;
    };
    let query = String::from_utf8_lossy(query);
    let mut parts = query.splitn(3, '\u{1}');
    let client_id = parts.next().unwrap_or("");
    let username = parts.next();
    let subject = parts.next().unwrap_or("a/b");

    let client = Client { client_id, username };
    let publish = acl.check(&client, Check::Publish(subject));
    let read = acl.check(&client, Check::Read(subject));
    let subscribe = acl.check(&client, Check::Subscribe(subject));
    if !subject.contains(['+', '#']) {
        assert_eq!(subscribe, read, "literal filter {subject:?} vs topic");
    }

    if !subject.contains('\u{2}') {
        let tame = |s: &str| s.replace(['+', '#'], "\u{2}");
        let id2 = tame(client_id);
        let user2 = username.map(tame);
        let client2 = Client { client_id: &id2, username: user2.as_deref() };
        assert_eq!(acl.check(&client2, Check::Publish(subject)), publish, "publish");
        assert_eq!(acl.check(&client2, Check::Read(subject)), read, "read");
        assert_eq!(acl.check(&client2, Check::Subscribe(subject)), subscribe, "subscribe");
    }
});
