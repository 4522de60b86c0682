//! Fuzz target `password_file`: `PasswordFile::parse` on arbitrary text. A file that parses
//! must print back to text that parses to the same users and hashes, and every user must be
//! found by name
//! and be a name `starling passwd` could have written. No hashing happens here (verification is slow by design).

#![no_main]

use starling_auth::PasswordFile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = PasswordFile::parse(&text) else {
        return;
    };
    let users: Vec<&str> = file.users().collect();
    assert_eq!(users.len(), file.len());
    let printed = file.to_text();
    let again = PasswordFile::parse(&printed)
        .unwrap_or_else(|e| panic!("printed file does not parse: {e}\n{printed:?}"));
    assert_eq!(again.users().collect::<Vec<_>>(), users);
    for u in &users {
        let h = file.hash(u).expect("listed user has a hash");
        assert_eq!(again.hash(u), Some(h));
        assert!(starling_auth::password::valid_username(u), "{u:?}");
    }
    assert_eq!(again.to_text(), printed);
});
