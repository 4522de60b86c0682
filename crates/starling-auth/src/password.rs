//! mosquitto's password file: one `username:hash` per line.
//!
//! Hashes read:
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 (mosquitto 2.0 writes
//!   it with 101 iterations, 2.1 with 1000).
//! - `$6$<base64 salt>$<base64 hash>`: SHA-512 of the password followed by the salt
//!   (mosquitto 1.x).
//! - `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`: the PHC string of argon2id (mosquitto 2.1).
//! - `$scram-sha-256$<iterations>$<salt>$<StoredKey>$<ServerKey>` (Starling's own): what a
//!   SCRAM-SHA-256 server keeps (RFC 5802), so that the user can log in with SCRAM-SHA-256
//!   enhanced authentication as well as with a plain password. See [`crate::scram`].
//!
//! New passwords are written as argon2id (m = 47104 KiB, t = 1, p = 1, as mosquitto 2.1 and
//! OWASP recommend) unless `$7$` is asked for. Comparison is in constant time, and an unknown
//! user costs one argon2id verification too, so response time does not tell whether a user
//! exists.
//!
//! Blank lines and lines starting with `#` are kept as they are. Anything else that is not
//! `username:hash` with a hash in one of the forms above is an error naming the line: a
//! password file is never half-read.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::error::{AuthError, ParseError};
use crate::scram::{self, ScramCredentials};

/// Most PBKDF2 iterations accepted in a `$7$` hash: more would stall the broker on every
/// CONNECT (mosquitto uses 101 or 1000).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// PBKDF2-SHA512 iterations up to which a check is cheap (about 0.1 ms here): see
/// [`PasswordHash::is_cheap`].
pub const CHEAP_PBKDF2_ITERATIONS: u32 = 200;
/// Most argon2 memory accepted in a hash, KiB (1 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
/// argon2id memory cost of new hashes, KiB.
pub const ARGON2_MEMORY_KIB: u32 = 47_104;
/// PBKDF2 iterations of new `$7$` hashes (mosquitto 2.1's default).
pub const PBKDF2_DEFAULT_ITERATIONS: u32 = 1000;
/// Salt length of new `$7$` hashes, bytes (as mosquitto).
const PBKDF2_SALT_LEN: usize = 12;
/// Length of a `$7$` hash, bytes (as mosquitto).
const PBKDF2_HASH_LEN: usize = 64;
/// Longest line accepted (a PHC string is about 100 bytes; usernames are at most 64 KiB).
const MAX_LINE: usize = 70_000;

/// Which hash to write for a new password.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashKind {
    /// `$argon2id$…` (the default).
    #[default]
    Argon2id,
    /// `$7$…` PBKDF2-HMAC-SHA512 with this many iterations, readable by mosquitto 2.0.
    Pbkdf2Sha512 {
        /// Iterations (mosquitto 2.0 uses 101, 2.1 uses 1000).
        iterations: u32,
    },
    /// `$scram-sha-256$…` with this many iterations (SCRAM-SHA-256 and plain passwords).
    ScramSha256 {
        /// Iterations (RFC 7677 asks for at least 4096).
        iterations: u32,
    },
}

/// One stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// Iterations.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
        /// Derived key.
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 {
        /// Salt.
        salt: Vec<u8>,
        /// Digest.
        hash: Vec<u8>,
    },
    /// `$argon2id$…`: the PHC string, checked to parse with sane parameters.
    Argon2id(String),
    /// `$scram-sha-256$…`: SCRAM-SHA-256 credentials.
    ScramSha256(ScramCredentials),
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print hashes or salts in logs.
        match self {
            Self::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "Pbkdf2Sha512 {{ iterations: {iterations}, .. }}")
            }
            Self::Sha512 { .. } => f.write_str("Sha512 { .. }"),
            Self::Argon2id(_) => f.write_str("Argon2id(..)"),
            Self::ScramSha256(c) => write!(f, "ScramSha256({c:?})"),
        }
    }
}

impl fmt::Display for PasswordHash {
    /// The hash as written in a password file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                B64.encode(salt),
                B64.encode(hash)
            ),
            Self::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            Self::Argon2id(phc) => f.write_str(phc),
            Self::ScramSha256(c) => write!(f, "{c}"),
        }
    }
}

fn b64(field: &str, what: &str) -> Result<Vec<u8>, String> {
    if field.is_empty() {
        return Err(format!("empty {what}"));
    }
    B64.decode(field)
        .map_err(|e| format!("{what} is not valid base64: {e}"))
}

impl PasswordHash {
    /// Parses a hash as found after `username:`. Does no hashing.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iter), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a $7$ hash is $7$<iterations>$<salt>$<hash>".into());
            };
            let iterations: u32 = iter
                .parse()
                .map_err(|_| format!("invalid iteration count {iter:?}"))?;
            if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
                return Err(format!(
                    "iteration count {iterations} out of range 1..={MAX_PBKDF2_ITERATIONS}"
                ));
            }
            let salt = b64(salt, "salt")?;
            let hash = b64(hash, "hash")?;
            if !(16..=64).contains(&hash.len()) {
                return Err(format!("a $7$ hash of {} bytes", hash.len()));
            }
            Ok(Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            })
        } else if let Some(rest) = s.strip_prefix("$6$") {
            let mut parts = rest.split('$');
            let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err("a $6$ hash is $6$<salt>$<hash>".into());
            };
            let salt = b64(salt, "salt")?;
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err(format!(
                    "a $6$ hash is 64 bytes (SHA-512), not {}",
                    hash.len()
                ));
            }
            Ok(Self::Sha512 { salt, hash })
        } else if s.starts_with("$argon2id$") {
            let parsed =
                argon2::PasswordHash::new(s).map_err(|e| format!("invalid argon2id hash: {e}"))?;
            let params = argon2::Params::try_from(&parsed)
                .map_err(|e| format!("invalid argon2id parameters: {e}"))?;
            if params.m_cost() > MAX_ARGON2_MEMORY_KIB {
                return Err(format!(
                    "argon2id memory cost {} KiB above the {MAX_ARGON2_MEMORY_KIB} KiB accepted",
                    params.m_cost()
                ));
            }
            if parsed.hash.is_none() || parsed.salt.is_none() {
                return Err("argon2id hash without salt or hash".into());
            }
            Ok(Self::Argon2id(s.to_owned()))
        } else if let Some(rest) = s.strip_prefix(scram::PREFIX) {
            ScramCredentials::parse(rest).map(Self::ScramSha256)
        } else if s.is_empty() {
            Err("no password hash after ':'".into())
        } else {
            Err(
                "unknown hash format (expected $7$, $6$, $argon2id$ or $scram-sha-256$; plain-text \
                 passwords are not accepted)"
                    .into(),
            )
        }
    }

    /// Hashes a new password.
    pub fn new(password: &[u8], kind: HashKind) -> Result<Self, AuthError> {
        match kind {
            HashKind::Argon2id => {
                let params = argon2::Params::new(ARGON2_MEMORY_KIB, 1, 1, None)
                    .map_err(|e| AuthError::Hash(e.to_string()))?;
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let salt = SaltString::generate(&mut rand_core::OsRng);
                let phc = argon
                    .hash_password(password, &salt)
                    .map_err(|e| AuthError::Hash(e.to_string()))?;
                Ok(Self::Argon2id(phc.to_string()))
            }
            HashKind::Pbkdf2Sha512 { iterations } => {
                if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
                    return Err(AuthError::Hash(format!(
                        "iteration count {iterations} out of range 1..={MAX_PBKDF2_ITERATIONS}"
                    )));
                }
                let mut salt = vec![0u8; PBKDF2_SALT_LEN];
                rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut salt)
                    .map_err(|e| AuthError::Hash(e.to_string()))?;
                let mut hash = vec![0u8; PBKDF2_HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
                Ok(Self::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                })
            }
            HashKind::ScramSha256 { iterations } => {
                ScramCredentials::generate(password, iterations).map(Self::ScramSha256)
            }
        }
    }

    /// Whether checking a password against this hash costs no more than the rest of a
    /// CONNECT (under about 0.1 ms): a single SHA-512 (`$6$`), or PBKDF2-SHA512 with at most
    /// [`CHEAP_PBKDF2_ITERATIONS`] (mosquitto_passwd's default is 101). Such a check is made
    /// at once, where a thread hop would cost more than the hash.
    pub fn is_cheap(&self) -> bool {
        match self {
            Self::Sha512 { .. } => true,
            Self::Pbkdf2Sha512 { iterations, .. } => *iterations <= CHEAP_PBKDF2_ITERATIONS,
            Self::Argon2id(_) | Self::ScramSha256(_) => false,
        }
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Self::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                let out = d.finalize();
                out.as_slice().ct_eq(hash).into()
            }
            Self::Argon2id(phc) => match argon2::PasswordHash::new(phc) {
                // The verifier compares in constant time.
                Ok(parsed) => argon2::Argon2::default()
                    .verify_password(password, &parsed)
                    .is_ok(),
                Err(_) => false,
            },
            Self::ScramSha256(c) => c.verify_password(password),
        }
    }
}

/// One line of the file.
#[derive(Clone, Debug)]
enum Line {
    /// A blank line or a `#` comment, kept verbatim.
    Other(String),
    /// A user.
    User {
        /// The username.
        name: String,
        /// The hash.
        hash: PasswordHash,
    },
}

/// A parsed password file.
#[derive(Clone, Debug, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// Index into `lines` by username.
    index: HashMap<String, usize>,
}

/// Whether a username can be stored in a password file.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && !name.contains([':', '\n', '\r'])
        && name.trim() == name
        && !name.starts_with('#')
}

impl PasswordFile {
    /// Parses the text of a password file. An empty file parses (to be filled by
    /// `starling passwd`); [`PasswordFile::load`] refuses it.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut file = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            if raw.len() > MAX_LINE {
                return Err(ParseError::new(n, "line too long"));
            }
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                file.lines.push(Line::Other(raw.trim_end().to_owned()));
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(ParseError::new(
                    n,
                    "expected username:hash (a user without a password hash is not accepted)",
                ));
            };
            if name.is_empty() {
                return Err(ParseError::new(n, "empty username"));
            }
            if name.trim() != name {
                return Err(ParseError::new(
                    n,
                    "username starts or ends with whitespace",
                ));
            }
            if !valid_username(name) {
                return Err(ParseError::new(n, format!("invalid username {name:?}")));
            }
            let hash = PasswordHash::parse(hash)
                .map_err(|m| ParseError::new(n, format!("user {name:?}: {m}")))?;
            if let Some(&first) = file.index.get(name) {
                let first_line = first + 1;
                return Err(ParseError::new(
                    n,
                    format!("user {name:?} appears twice (first on line {first_line})"),
                ));
            }
            file.index.insert(name.to_owned(), file.lines.len());
            file.lines.push(Line::User {
                name: name.to_owned(),
                hash,
            });
        }
        Ok(file)
    }

    /// Reads and parses a password file; a missing, unreadable, malformed or empty file is an
    /// error naming the file (and the line).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file = Self::parse(&text).map_err(|source| AuthError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if file.is_empty() {
            return Err(AuthError::EmptyPasswordFile {
                path: path.to_owned(),
            });
        }
        Ok(file)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Usernames, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::User { name, .. } => Some(name.as_str()),
            Line::Other(_) => None,
        })
    }

    /// The hash stored for `user`.
    pub fn hash(&self, user: &str) -> Option<&PasswordHash> {
        match self.lines.get(*self.index.get(user)?) {
            Some(Line::User { hash, .. }) => Some(hash),
            _ => None,
        }
    }

    /// Whether `user` exists and `password` is theirs. An unknown user costs a verification
    /// against a decoy ([`PasswordFile::hash_or_decoy`]) whose result is thrown away, so the
    /// answer takes about as long either way.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.hash(user) {
            Some(h) => h.verify(password),
            None => {
                if let Some(decoy) = self.hash_or_decoy(user) {
                    let _ = decoy.verify(password);
                }
                false
            }
        }
    }

    /// The hash stored for `user`, or for a user the file does not hold a decoy that costs
    /// what a known user's check costs: the first user's hash (a file's users usually share
    /// one kind and cost), or a dummy argon2id hash in a file without users. Where checks are
    /// run (at once for a cheap hash, on the hashing threads otherwise) is decided on this
    /// too, so that neither the cost nor the path tells whether a user exists.
    pub fn hash_or_decoy(&self, user: &str) -> Option<&PasswordHash> {
        self.hash(user).or_else(|| {
            let first = self.lines.iter().find_map(|l| match l {
                Line::User { hash, .. } => Some(hash),
                Line::Other(_) => None,
            });
            match first {
                Some(h) => Some(h),
                None => dummy_hash(),
            }
        })
    }

    /// Adds `user` or replaces their hash (kept at the same line).
    pub fn set(&mut self, user: &str, hash: PasswordHash) -> Result<(), AuthError> {
        if !valid_username(user) {
            return Err(AuthError::InvalidUsername(user.to_owned()));
        }
        match self.index.get(user) {
            Some(&i) => {
                if let Some(line) = self.lines.get_mut(i) {
                    *line = Line::User {
                        name: user.to_owned(),
                        hash,
                    };
                }
            }
            None => {
                self.index.insert(user.to_owned(), self.lines.len());
                self.lines.push(Line::User {
                    name: user.to_owned(),
                    hash,
                });
            }
        }
        Ok(())
    }

    /// Removes `user`.
    pub fn remove(&mut self, user: &str) -> Result<(), AuthError> {
        let Some(i) = self.index.remove(user) else {
            return Err(AuthError::UnknownUser(user.to_owned()));
        };
        self.lines.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        Ok(())
    }

    /// The file's text: every line, in order, each ending with a newline.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Other(s) => out.push_str(s),
                Line::User { name, hash } => {
                    out.push_str(name);
                    out.push(':');
                    out.push_str(&hash.to_string());
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically (a temporary file in the same directory, then a rename),
    /// readable by its owner only on Unix.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let io = |source| AuthError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "passwd".into());
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let result = (|| {
            use std::io::Write;
            let mut f = options.open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}

/// An argon2id hash of a random password, made once, verified against for unknown users.
fn dummy_hash() -> Option<&'static PasswordHash> {
    static DUMMY: OnceLock<Option<PasswordHash>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let mut pw = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut pw);
            PasswordHash::new(&pw, HashKind::Argon2id).ok()
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pbkdf2_hash(pw: &[u8], salt: &[u8], iterations: u32) -> String {
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(pw, salt, iterations, &mut out);
        format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(out))
    }

    #[test]
    fn pbkdf2_hash_round_trips_and_verifies() {
        let text = pbkdf2_hash(b"secret", b"0123456789ab", 101);
        let h = PasswordHash::parse(&text).unwrap();
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"Secret"));
        assert!(!h.verify(b""));
        assert_eq!(h.to_string(), text);
    }

    /// Written by `mosquitto_passwd` 2.0.11: `-c -b FILE alice 'correct horse'`, then
    /// `-H sha512 -b FILE bob 's3cret!'`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$8YdfJjrRGg538DAR$Xevic/DR65nNAHIK1O+utYj0VSVLCcWPPltVyWmi/E1lv7fyT3kdnEhIVY0Ygk10YDGxLhoqk28AZDBXt8neWw==
bob:$6$oQQTKdIttsONvr3W$pMe42QCMHtjj8MhsmAI0pg5j01yPh6BU08x2fODmI8AoUwPijVADsXVt8lYIVEAqvSqFH5kQuxlATkclEfBp5A==
";

    #[test]
    fn reads_mosquitto_passwd_output() {
        let f = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        assert!(f.verify("alice", b"correct horse"));
        assert!(!f.verify("alice", b"correct horse "));
        assert!(f.verify("bob", b"s3cret!"));
        assert!(!f.verify("bob", b"s3cret"));
        assert_eq!(f.to_text(), MOSQUITTO_FILE);
    }

    #[test]
    fn sha512_legacy_hash() {
        let salt = b"saltsaltsalt";
        let mut d = Sha512::new();
        d.update(b"pw");
        d.update(salt);
        let text = format!("$6${}${}", B64.encode(salt), B64.encode(d.finalize()));
        let h = PasswordHash::parse(&text).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pw2"));
    }

    #[test]
    fn argon2id_new_and_verify() {
        let h = PasswordHash::new(b"hunter2", HashKind::Argon2id).unwrap();
        let text = h.to_string();
        assert!(
            text.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"),
            "{text}"
        );
        let parsed = PasswordHash::parse(&text).unwrap();
        assert!(parsed.verify(b"hunter2"));
        assert!(!parsed.verify(b"hunter3"));
    }

    #[test]
    fn scram_new_and_verify() {
        let h = PasswordHash::new(b"pw", HashKind::ScramSha256 { iterations: 4096 }).unwrap();
        let text = h.to_string();
        assert!(text.starts_with("$scram-sha-256$4096$"), "{text}");
        assert!(
            !format!("{h:?}").contains(&text[20..]),
            "keys stay out of Debug"
        );
        let parsed = PasswordHash::parse(&text).unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pw2"));
    }

    #[test]
    fn pbkdf2_new_is_readable_by_the_7_parser() {
        let h = PasswordHash::new(b"pw", HashKind::Pbkdf2Sha512 { iterations: 101 }).unwrap();
        let text = h.to_string();
        assert!(text.starts_with("$7$101$"));
        assert_eq!(text, pbkdf2_hash_from(&h, b"pw"));
        assert!(PasswordHash::parse(&text).unwrap().verify(b"pw"));
    }

    fn pbkdf2_hash_from(h: &PasswordHash, pw: &[u8]) -> String {
        let PasswordHash::Pbkdf2Sha512 {
            iterations, salt, ..
        } = h
        else {
            panic!("not pbkdf2")
        };
        pbkdf2_hash(pw, salt, *iterations)
    }

    #[test]
    fn file_verifies_users_and_refuses_unknown_ones() {
        let text = format!(
            "# users\n\nalice:{}\nbob:{}\n",
            pbkdf2_hash(b"a-pw", b"salt-a", 101),
            pbkdf2_hash(b"b-pw", b"salt-b", 101)
        );
        let f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.verify("alice", b"a-pw"));
        assert!(!f.verify("alice", b"b-pw"));
        assert!(f.verify("bob", b"b-pw"));
        assert!(!f.verify("carol", b"a-pw"));
        assert!(!f.verify("", b""));
        assert_eq!(f.to_text(), text);
    }

    /// An unknown user is checked against a decoy of the file's own kind and cost (so a
    /// file of cheap hashes does not answer unknown users with a slow argon2id check), and
    /// the decoy, another user's hash, never lets anyone in.
    #[test]
    fn an_unknown_user_costs_what_a_known_one_does_and_gets_nothing() {
        let text = format!(
            "# users\nalice:{}\nbob:{}\n",
            pbkdf2_hash(b"a-pw", b"salt-a", 101),
            pbkdf2_hash(b"b-pw", b"salt-b", 101)
        );
        let f = PasswordFile::parse(&text).unwrap();
        let decoy = f.hash_or_decoy("carol").unwrap();
        assert!(std::ptr::eq(decoy, f.hash("alice").unwrap()));
        assert!(decoy.is_cheap());
        assert!(
            !f.verify("carol", b"a-pw"),
            "the decoy's password is not carol's"
        );
        let empty = PasswordFile::parse("# nobody\n").unwrap();
        let dummy = empty.hash_or_decoy("carol").unwrap();
        assert!(matches!(dummy, PasswordHash::Argon2id(_)));
        assert!(!empty.verify("carol", b""));
    }

    #[test]
    fn errors_name_the_line() {
        let good = pbkdf2_hash(b"x", b"salt", 101);
        let cases = [
            (format!("alice:{good}\nbob\n"), 2, "username:hash"),
            (format!("alice:{good}\n:{good}\n"), 2, "empty username"),
            ("alice:\n".to_string(), 1, "no password hash"),
            ("alice:plaintext\n".to_string(), 1, "unknown hash format"),
            (
                "alice:$7$0$c2FsdA==$aGFzaA==\n".to_string(),
                1,
                "out of range",
            ),
            ("alice:$7$101$!!$aGFzaA==\n".to_string(), 1, "base64"),
            ("alice:$7$101$c2FsdA==\n".to_string(), 1, "$7$<iterations>"),
            ("alice:$6$c2FsdA==$aGFzaA==\n".to_string(), 1, "64 bytes"),
            ("alice:$argon2id$v=19$nonsense\n".to_string(), 1, "argon2id"),
            (
                "alice:$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n"
                    .to_string(),
                1,
                "memory cost",
            ),
            (format!("a:{good}\n\na:{good}\n"), 3, "first on line 1"),
            (
                "alice:$scram-sha-256$4096$c2FsdA==$AAAA\n".to_string(),
                1,
                "$scram-sha-256$<iterations>",
            ),
        ];
        for (text, line, needle) in cases {
            let e = PasswordFile::parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn empty_and_missing_files_fail_closed() {
        let dir = std::env::temp_dir().join(format!("starling-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nobody\n\n").unwrap();
        assert!(matches!(
            PasswordFile::load(&empty),
            Err(AuthError::EmptyPasswordFile { .. })
        ));
        assert!(matches!(
            PasswordFile::load(&dir.join("missing")),
            Err(AuthError::Io { .. })
        ));
        let bad = dir.join("bad");
        std::fs::write(&bad, "alice:$7$\n").unwrap();
        let e = PasswordFile::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad") && e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn set_remove_save_load() {
        let dir = std::env::temp_dir().join(format!("starling-pw2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        let mut f = PasswordFile::parse("# comment\n").unwrap();
        f.set(
            "alice",
            PasswordHash::new(b"1", HashKind::Pbkdf2Sha512 { iterations: 10 }).unwrap(),
        )
        .unwrap();
        f.set(
            "bob",
            PasswordHash::new(b"2", HashKind::Pbkdf2Sha512 { iterations: 10 }).unwrap(),
        )
        .unwrap();
        f.set(
            "alice",
            PasswordHash::new(b"3", HashKind::Pbkdf2Sha512 { iterations: 10 }).unwrap(),
        )
        .unwrap();
        assert!(f.set("a:b", PasswordHash::Argon2id(String::new())).is_err());
        f.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
        let mut g = PasswordFile::load(&path).unwrap();
        assert_eq!(g.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(g.verify("alice", b"3"));
        assert!(g.verify("bob", b"2"));
        g.remove("alice").unwrap();
        assert!(g.remove("alice").is_err());
        assert!(!g.verify("alice", b"3"));
        assert!(g.verify("bob", b"2"));
        assert!(g.to_text().starts_with("# comment\nbob:$7$10$"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
