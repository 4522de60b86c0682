//! The password and ACL files as an [`Authenticator`] and an [`Authorizer`] that can be
//! reloaded (on SIGHUP): a reload swaps in the new contents atomically, or, if the new file
//! is missing or invalid, keeps the old contents and returns the error for the log.
//!
//! [`StandardAuthenticator`] is a listener's policy: anonymous clients, the password file,
//! and the certificate identity as username.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::acl::{AclFile, Check};
use crate::error::AuthError;
use crate::hashing::HashPool;
use crate::password::PasswordFile;
use crate::{
    AclBackend, Action, Answer, AuthBackend, AuthChain, AuthDecision, Authenticator, Authorizer,
    Client, ConnectInfo, DenyReason, Grant, Verdict,
};

/// A password file, reloadable.
#[derive(Debug)]
pub struct PasswordAuthenticator {
    path: PathBuf,
    file: ArcSwap<PasswordFile>,
}

impl PasswordAuthenticator {
    /// Loads the file; fails if it is missing, malformed or has no users.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let file = PasswordFile::load(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: ArcSwap::from_pointee(file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again. On error the previous contents stay in force. Returns the number
    /// of users loaded.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let file = PasswordFile::load(&self.path)?;
        let n = file.len();
        self.file.store(Arc::new(file));
        Ok(n)
    }

    /// Whether `user` exists with `password`, in constant time.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.file.load().verify(user, password)
    }

    /// The file's current contents.
    pub fn file(&self) -> Arc<PasswordFile> {
        self.file.load_full()
    }
}

/// An ACL file, reloadable.
#[derive(Debug)]
pub struct AclAuthorizer {
    path: PathBuf,
    acl: ArcSwap<AclFile>,
    /// Bumped after each reload: answers given before it may be stale.
    generation: AtomicU64,
}

impl AclAuthorizer {
    /// Loads the file; fails if it is missing or malformed. An empty file is valid and
    /// denies everything.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let acl = AclFile::load(path)?;
        if acl.rule_count() == 0 {
            tracing::warn!(path = %path.display(), "ACL file has no rules: every client is denied everything");
        }
        Ok(Self {
            path: path.to_owned(),
            acl: ArcSwap::from_pointee(acl),
            generation: AtomicU64::new(0),
        })
    }

    /// An authorizer over already-parsed rules (tests, embedding).
    pub fn from_acl(acl: AclFile) -> Self {
        Self {
            path: PathBuf::new(),
            acl: ArcSwap::from_pointee(acl),
            generation: AtomicU64::new(0),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again. On error the previous rules stay in force. Returns the number of
    /// rules loaded.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let acl = AclFile::load(&self.path)?;
        let n = acl.rule_count();
        self.acl.store(Arc::new(acl));
        // After the store: whoever sees the new generation also sees the new rules.
        self.generation.fetch_add(1, Ordering::Release);
        Ok(n)
    }
}

impl Authorizer for AclAuthorizer {
    fn can_publish(&self, client: &Client<'_>, topic: &str) -> Answer<bool> {
        Answer::Now(self.acl.load().check(client, Check::Publish(topic)))
    }
    fn can_subscribe(&self, client: &Client<'_>, filter: &str) -> Answer<bool> {
        Answer::Now(self.acl.load().check(client, Check::Subscribe(filter)))
    }
    fn can_read(&self, client: &Client<'_>, topic: &str) -> bool {
        self.acl.load().check(client, Check::Read(topic))
    }
    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }
}

/// In a chain the file decides every question it is asked (what no rule grants is refused),
/// so backends after it are never reached.
impl AclBackend for AclAuthorizer {
    fn kind(&self) -> &'static str {
        "acl_file"
    }
    fn check(&self, client: &Client<'_>, action: Action, topic: &str) -> Answer<Option<bool>> {
        Answer::Now(Some(self.acl.load().allows(client, action, topic)))
    }
    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }
}

/// The password file in a chain: a user it holds is allowed with the right password and
/// refused (0x86) with a wrong or missing one; a user it does not hold, or a client without
/// a username, is not its client. Every answer costs one hash, so the answer does not tell
/// whether a user exists.
impl AuthBackend for PasswordAuthenticator {
    fn kind(&self) -> &'static str {
        "password_file"
    }
    /// The hash runs on the shared [`HashPool`]: the answer comes later, or at once "busy"
    /// when the pool's queue is full. A cheap hash ([`PasswordHash::is_cheap`]) is checked
    /// at once.
    ///
    /// [`PasswordHash::is_cheap`]: crate::password::PasswordHash::is_cheap
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        let Some(user) = info.username else {
            return Answer::Now(Verdict::Pass);
        };
        let file = self.file.load_full();
        if file.hash_or_decoy(user).is_some_and(|h| h.is_cheap()) {
            return Answer::Now(verdict(&file, user, info.password));
        }
        let user = user.to_owned();
        let password = info.password.map(<[u8]>::to_vec);
        let check = move || verdict(&file, &user, password.as_deref());
        match HashPool::shared().run(check, Verdict::Deny(DenyReason::Busy)) {
            Some(later) => Answer::Later(later),
            None => Answer::Now(Verdict::Deny(DenyReason::Busy)),
        }
    }
}

/// The password file's verdict on `user` with `password`: one hash either way, so that the
/// answer's timing does not tell whether the user exists.
fn verdict(file: &PasswordFile, user: &str, password: Option<&[u8]>) -> Verdict {
    let right = file.verify(user, password.unwrap_or_default()) && password.is_some();
    if right {
        Verdict::Allow(Grant::user(Some(user.to_owned())))
    } else if file.hash(user).is_some() {
        Verdict::Deny(DenyReason::BadUserNameOrPassword)
    } else {
        Verdict::Pass
    }
}

/// The identity of a verified TLS client certificate as the username. `required`: a client
/// without one is refused (0x87), as with mosquitto's `use_identity_as_username`; otherwise
/// it is not this backend's client.
#[derive(Clone, Copy, Debug)]
pub struct CertificateBackend {
    /// Refuse clients without a certificate identity.
    pub required: bool,
}

impl AuthBackend for CertificateBackend {
    fn kind(&self) -> &'static str {
        "certificate"
    }
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        Answer::Now(match info.certificate_identity {
            Some(id) => Verdict::Allow(Grant::user(Some(id.to_owned()))),
            None if self.required => Verdict::Deny(DenyReason::NotAuthorized),
            None => Verdict::Pass,
        })
    }
}

/// A listener's authentication policy, as mosquitto's:
///
/// 1. With `identity_as_username`, a client must present a verified certificate with an
///    identity; that identity is its username and no password is checked (0x87 without one).
/// 2. A client with a username needs the right password in the password file (0x86
///    otherwise). Without a password file, a username is accepted only where anonymous
///    clients are, and is then taken as given.
/// 3. A client without a username is anonymous: allowed only with `allow_anonymous` (0x87
///    otherwise).
#[derive(Debug)]
pub struct StandardAuthenticator {
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// The password file, if any.
    pub passwords: Option<Arc<PasswordAuthenticator>>,
    /// Take the username from the client certificate.
    pub identity_as_username: bool,
}

impl Authenticator for StandardAuthenticator {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<AuthDecision> {
        // The chain's rule for a client nobody claims, with the same backends (cheap, so
        // decided now, before a password check that may answer later).
        let backends: Vec<Arc<dyn AuthBackend>> = match &self.passwords {
            Some(p) => vec![p.clone()],
            None => Vec::new(),
        };
        let unclaimed = AuthChain::new(backends, self.allow_anonymous).last_word(info);
        let verdict = if self.identity_as_username {
            Answer::Now(CertificateBackend { required: true }.verdict_now(info))
        } else {
            match &self.passwords {
                Some(p) => p.authenticate(info),
                None => Answer::Now(Verdict::Pass),
            }
        };
        verdict.map(move |v| {
            let v = match v {
                Verdict::Pass => unclaimed,
                v => v,
            };
            match v {
                Verdict::Allow(g) => AuthDecision::Allow(g),
                Verdict::Deny(r) => AuthDecision::Deny(r),
                Verdict::Pass => AuthDecision::Deny(DenyReason::NotAuthorized),
            }
        })
    }
}

impl CertificateBackend {
    fn verdict_now(self, info: &ConnectInfo<'_>) -> Verdict {
        match self.authenticate(info) {
            Answer::Now(v) => v,
            Answer::Later(_) => Verdict::Deny(DenyReason::NotAuthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::{HashKind, PasswordHash};

    fn info<'a>(user: Option<&'a str>, pw: Option<&'a [u8]>) -> ConnectInfo<'a> {
        ConnectInfo {
            client_id: "c",
            username: user,
            password: pw,
            peer: None,
            listener: "test",
            certificate_identity: None,
            unix_uid: None,
        }
    }

    impl StandardAuthenticator {
        fn auth(&self, info: &ConnectInfo<'_>) -> AuthDecision {
            match self.authenticate(info) {
                Answer::Now(d) => d,
                Answer::Later(f) => crate::hashing::block_on(f),
            }
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("starling-auth-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_passwords(path: &Path, users: &[(&str, &[u8])]) {
        let mut f = PasswordFile::default();
        for (u, p) in users {
            f.set(
                u,
                PasswordHash::new(p, HashKind::Pbkdf2Sha512 { iterations: 10 }).unwrap(),
            )
            .unwrap();
        }
        f.save(path).unwrap();
    }

    #[test]
    fn policy() {
        let dir = temp("policy");
        let path = dir.join("passwd");
        write_passwords(&path, &[("alice", b"pw")]);
        let passwords = Arc::new(PasswordAuthenticator::load(&path).unwrap());
        let closed = StandardAuthenticator {
            allow_anonymous: false,
            passwords: Some(passwords.clone()),
            identity_as_username: false,
        };
        let allow = |u: &str| AuthDecision::Allow(Grant::user(Some(u.to_owned())));
        let bad = AuthDecision::Deny(DenyReason::BadUserNameOrPassword);
        let not = AuthDecision::Deny(DenyReason::NotAuthorized);
        // A cheap hash (10 iterations here) is checked at once, and so is a client without a
        // username, and an unknown user: it costs a decoy of the file's own kind (alice's).
        assert!(matches!(
            closed.authenticate(&info(Some("alice"), Some(b"pw"))),
            Answer::Now(_)
        ));
        assert!(matches!(
            closed.authenticate(&info(None, None)),
            Answer::Now(_)
        ));
        assert!(matches!(
            closed.authenticate(&info(Some("bob"), Some(b"pw"))),
            Answer::Now(_)
        ));
        assert_eq!(
            closed.auth(&info(Some("alice"), Some(b"pw"))),
            allow("alice")
        );
        assert_eq!(closed.auth(&info(Some("alice"), Some(b"no"))), bad);
        assert_eq!(closed.auth(&info(Some("alice"), None)), bad);
        assert_eq!(closed.auth(&info(Some("bob"), Some(b"pw"))), bad);
        assert_eq!(closed.auth(&info(None, None)), not);
        assert_eq!(closed.auth(&info(None, Some(b"pw"))), not);

        let open = StandardAuthenticator {
            allow_anonymous: true,
            passwords: Some(passwords),
            identity_as_username: false,
        };
        assert_eq!(
            open.auth(&info(None, None)),
            AuthDecision::Allow(Grant::default())
        );
        assert_eq!(open.auth(&info(Some("alice"), Some(b"no"))), bad);

        let no_file = StandardAuthenticator {
            allow_anonymous: false,
            passwords: None,
            identity_as_username: false,
        };
        assert_eq!(no_file.auth(&info(Some("x"), Some(b"y"))), bad);
        assert_eq!(no_file.auth(&info(None, None)), not);

        let cert = StandardAuthenticator {
            allow_anonymous: false,
            passwords: None,
            identity_as_username: true,
        };
        let mut i = info(Some("ignored"), None);
        assert_eq!(cert.auth(&i), not);
        i.certificate_identity = Some("device-7");
        assert_eq!(cert.auth(&i), allow("device-7"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_slow_hash_is_checked_on_the_pool() {
        let dir = temp("slow");
        let path = dir.join("passwd");
        let mut f = PasswordFile::default();
        f.set(
            "carol",
            PasswordHash::new(b"pw", HashKind::Argon2id).unwrap(),
        )
        .unwrap();
        f.save(&path).unwrap();
        let std = StandardAuthenticator {
            allow_anonymous: false,
            passwords: Some(Arc::new(PasswordAuthenticator::load(&path).unwrap())),
            identity_as_username: false,
        };
        for (pw, expected) in [
            (
                &b"pw"[..],
                AuthDecision::Allow(Grant::user(Some("carol".into()))),
            ),
            (
                &b"no"[..],
                AuthDecision::Deny(DenyReason::BadUserNameOrPassword),
            ),
        ] {
            match std.authenticate(&info(Some("carol"), Some(pw))) {
                Answer::Later(f) => assert_eq!(crate::hashing::block_on(f), expected),
                Answer::Now(d) => panic!("argon2id checked on the caller's thread: {d:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reload_keeps_old_contents_on_error() {
        let dir = temp("reload");
        let pw = dir.join("passwd");
        write_passwords(&pw, &[("alice", b"1")]);
        let a = PasswordAuthenticator::load(&pw).unwrap();
        assert!(a.verify("alice", b"1"));
        write_passwords(&pw, &[("alice", b"2"), ("bob", b"3")]);
        assert_eq!(a.reload().unwrap(), 2);
        assert!(a.verify("alice", b"2"));
        std::fs::write(&pw, "alice:broken\n").unwrap();
        assert!(a.reload().is_err());
        assert!(a.verify("bob", b"3"), "old users still in force");
        std::fs::write(&pw, "").unwrap();
        assert!(a.reload().is_err());
        assert!(a.verify("bob", b"3"));

        let acl = dir.join("acl");
        std::fs::write(&acl, "topic read a/#\n").unwrap();
        let z = AclAuthorizer::load(&acl).unwrap();
        let c = Client {
            client_id: "c",
            username: None,
        };
        assert!(z.can_read(&c, "a/b"));
        let g0 = Authorizer::generation(&z);
        std::fs::write(&acl, "topic read b/#\n").unwrap();
        assert_eq!(z.reload().unwrap(), 1);
        assert!(!z.can_read(&c, "a/b"));
        let g1 = Authorizer::generation(&z);
        assert_ne!(g0, g1, "a reload changes the generation");
        std::fs::write(&acl, "topic raed c\n").unwrap();
        let e = z.reload().unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(z.can_read(&c, "b/x"), "old rules still in force");
        assert_eq!(
            Authorizer::generation(&z),
            g1,
            "a failed reload changes nothing"
        );
        std::fs::remove_file(&acl).unwrap();
        assert!(z.reload().is_err());
        assert!(z.can_read(&c, "b/x"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
