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
use crate::password::PasswordFile;
use crate::{AuthDecision, Authenticator, Authorizer, Client, ConnectInfo, DenyReason};

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
    fn can_publish(&self, client: &Client<'_>, topic: &str) -> bool {
        self.acl.load().check(client, Check::Publish(topic))
    }
    fn can_subscribe(&self, client: &Client<'_>, filter: &str) -> bool {
        self.acl.load().check(client, Check::Subscribe(filter))
    }
    fn can_read(&self, client: &Client<'_>, topic: &str) -> bool {
        self.acl.load().check(client, Check::Read(topic))
    }
    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
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
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthDecision {
        if self.identity_as_username {
            return match info.certificate_identity {
                Some(id) => AuthDecision::Allow {
                    username: Some(id.to_owned()),
                },
                None => AuthDecision::Deny(DenyReason::NotAuthorized),
            };
        }
        match (info.username, &self.passwords) {
            (Some(user), Some(passwords)) => {
                let password = info.password.unwrap_or_default();
                if info.password.is_some() && passwords.verify(user, password) {
                    AuthDecision::Allow {
                        username: Some(user.to_owned()),
                    }
                } else {
                    if info.password.is_none() {
                        // Same cost as a wrong password.
                        let _ = passwords.verify("", b"");
                    }
                    AuthDecision::Deny(DenyReason::BadUserNameOrPassword)
                }
            }
            (Some(user), None) if self.allow_anonymous => AuthDecision::Allow {
                username: Some(user.to_owned()),
            },
            (Some(_), None) => AuthDecision::Deny(DenyReason::BadUserNameOrPassword),
            (None, _) if self.allow_anonymous => AuthDecision::Allow { username: None },
            (None, _) => AuthDecision::Deny(DenyReason::NotAuthorized),
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
        let allow = |u: &str| AuthDecision::Allow {
            username: Some(u.to_owned()),
        };
        let bad = AuthDecision::Deny(DenyReason::BadUserNameOrPassword);
        let not = AuthDecision::Deny(DenyReason::NotAuthorized);
        assert_eq!(
            closed.authenticate(&info(Some("alice"), Some(b"pw"))),
            allow("alice")
        );
        assert_eq!(closed.authenticate(&info(Some("alice"), Some(b"no"))), bad);
        assert_eq!(closed.authenticate(&info(Some("alice"), None)), bad);
        assert_eq!(closed.authenticate(&info(Some("bob"), Some(b"pw"))), bad);
        assert_eq!(closed.authenticate(&info(None, None)), not);
        assert_eq!(closed.authenticate(&info(None, Some(b"pw"))), not);

        let open = StandardAuthenticator {
            allow_anonymous: true,
            passwords: Some(passwords),
            identity_as_username: false,
        };
        assert_eq!(
            open.authenticate(&info(None, None)),
            AuthDecision::Allow { username: None }
        );
        assert_eq!(open.authenticate(&info(Some("alice"), Some(b"no"))), bad);

        let no_file = StandardAuthenticator {
            allow_anonymous: false,
            passwords: None,
            identity_as_username: false,
        };
        assert_eq!(no_file.authenticate(&info(Some("x"), Some(b"y"))), bad);
        assert_eq!(no_file.authenticate(&info(None, None)), not);

        let cert = StandardAuthenticator {
            allow_anonymous: false,
            passwords: None,
            identity_as_username: true,
        };
        let mut i = info(Some("ignored"), None);
        assert_eq!(cert.authenticate(&i), not);
        i.certificate_identity = Some("device-7");
        assert_eq!(cert.authenticate(&i), allow("device-7"));
        std::fs::remove_dir_all(&dir).unwrap();
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
        let g0 = z.generation();
        std::fs::write(&acl, "topic read b/#\n").unwrap();
        assert_eq!(z.reload().unwrap(), 1);
        assert!(!z.can_read(&c, "a/b"));
        let g1 = z.generation();
        assert_ne!(g0, g1, "a reload changes the generation");
        std::fs::write(&acl, "topic raed c\n").unwrap();
        let e = z.reload().unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(z.can_read(&c, "b/x"), "old rules still in force");
        assert_eq!(z.generation(), g1, "a failed reload changes nothing");
        std::fs::remove_file(&acl).unwrap();
        assert!(z.reload().is_err());
        assert!(z.can_read(&c, "b/x"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
