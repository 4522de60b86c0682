//! `starling passwd`: manages a password file with mosquitto_passwd's flags, so scripts
//! written for mosquitto keep working.
//!
//! ```text
//! starling passwd -c FILE USER           create (or overwrite) FILE with USER; asks the password
//! starling passwd FILE USER              add USER or change their password
//! starling passwd -b FILE USER PASSWORD  the same, password on the command line
//! starling passwd -D FILE USER           delete USER
//! ```
//!
//! Without `-b` the password is asked twice on the terminal (not echoed), or read as one line
//! from standard input when that is not a terminal. New hashes are argon2id unless
//! `-H sha512-pbkdf2` asks for mosquitto 2.0's `$7$` format, or `-H scram-sha-256` for the
//! `$scram-sha-256$` entry that SCRAM-SHA-256 enhanced authentication needs.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use starling_auth::PasswordFile;
use starling_auth::password::{HashKind, PBKDF2_DEFAULT_ITERATIONS, PasswordHash};
use starling_auth::scram;

/// Arguments of `starling passwd`, as mosquitto_passwd's.
#[derive(Debug, clap::Args)]
#[command(
    about = "Manage a password file (mosquitto_passwd's flags)",
    after_help = "Examples:\n  starling passwd -c /etc/starling/passwd alice\n  \
                  starling passwd -b /etc/starling/passwd bob 's3cret'\n  \
                  starling passwd -D /etc/starling/passwd bob"
)]
pub struct PasswdArgs {
    /// Create a new password file, overwriting an existing one.
    #[arg(short = 'c', conflicts_with = "delete")]
    pub create: bool,
    /// Batch mode: the password is given on the command line.
    #[arg(short = 'b', conflicts_with = "delete")]
    pub batch: bool,
    /// Delete the user.
    #[arg(short = 'D')]
    pub delete: bool,
    /// Hash for new passwords: argon2id (default), sha512-pbkdf2 (mosquitto 2.0's `$7$`) or
    /// scram-sha-256 (for SCRAM-SHA-256 enhanced authentication; plain passwords work too).
    #[arg(short = 'H', value_name = "HASH", default_value = "argon2id")]
    pub hash: String,
    /// Iterations for sha512-pbkdf2 (default 1000) or scram-sha-256 (default 4096).
    #[arg(short = 'I', value_name = "ITERATIONS")]
    pub iterations: Option<u32>,
    /// The password file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The username.
    #[arg(value_name = "USER")]
    pub user: String,
    /// The password (only with -b).
    #[arg(value_name = "PASSWORD")]
    pub password: Option<String>,
}

/// What to do to the file.
#[derive(Debug)]
pub enum Change {
    /// Set `user`'s password.
    Set {
        /// Start from an empty file (`-c`).
        create: bool,
        /// The password.
        password: String,
        /// The hash to write.
        kind: HashKind,
    },
    /// Delete `user`.
    Delete,
}

/// Runs `starling passwd`.
pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    let kind = match args.hash.as_str() {
        "argon2id" => {
            if args.iterations.is_some() {
                bail!("-I applies to -H sha512-pbkdf2 and -H scram-sha-256 only");
            }
            HashKind::Argon2id
        }
        "sha512-pbkdf2" => HashKind::Pbkdf2Sha512 {
            iterations: args.iterations.unwrap_or(PBKDF2_DEFAULT_ITERATIONS),
        },
        "scram-sha-256" => HashKind::ScramSha256 {
            iterations: args.iterations.unwrap_or(scram::DEFAULT_ITERATIONS),
        },
        "sha512" => bail!(
            "-H sha512 ($6$) is read but not written: one round of SHA-512 is far too fast to \
             resist guessing; use argon2id, sha512-pbkdf2 or scram-sha-256"
        ),
        other => {
            bail!("unknown hash {other:?} (expected argon2id, sha512-pbkdf2 or scram-sha-256)")
        }
    };
    let change = if args.delete {
        if args.password.is_some() {
            bail!("-D takes no password");
        }
        Change::Delete
    } else {
        let password = match (args.batch, args.password) {
            (true, Some(p)) => p,
            (true, None) => bail!("-b needs the password after the username"),
            (false, Some(_)) => bail!("a password on the command line needs -b"),
            (false, None) => read_password()?,
        };
        if password.is_empty() {
            bail!("empty password");
        }
        Change::Set {
            create: args.create,
            password,
            kind,
        }
    };
    apply(&args.file, &args.user, change)
}

/// Applies `change` for `user` to the password file at `path` and writes it back atomically.
pub fn apply(path: &Path, user: &str, change: Change) -> anyhow::Result<()> {
    if !starling_auth::password::valid_username(user) {
        bail!("invalid username {user:?}: it must be non-empty, without ':' or line breaks");
    }
    let mut file = match &change {
        Change::Set { create: true, .. } => PasswordFile::default(),
        _ => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read password file {} (use -c to create it)",
                    path.display()
                )
            })?;
            PasswordFile::parse(&text)
                .with_context(|| format!("invalid password file {}", path.display()))?
        }
    };
    match change {
        Change::Set { password, kind, .. } => {
            let hash = PasswordHash::new(password.as_bytes(), kind)?;
            file.set(user, hash)?;
        }
        Change::Delete => file.remove(user)?,
    }
    file.save(path)?;
    Ok(())
}

/// The password from the terminal (twice, not echoed) or one line of standard input.
pub(crate) fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read password")?;
        let second =
            rpassword::prompt_password("Reenter password: ").context("cannot read password")?;
        if first != second {
            bail!("passwords do not match");
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(password: &str, create: bool) -> Change {
        Change::Set {
            create,
            password: password.into(),
            kind: HashKind::Pbkdf2Sha512 { iterations: 10 },
        }
    }

    #[test]
    fn create_add_change_delete() {
        let dir = std::env::temp_dir().join(format!("starling-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        let _ = std::fs::remove_file(&path);
        assert!(
            apply(&path, "alice", set("a", false)).is_err(),
            "no -c, no file"
        );
        apply(&path, "alice", set("a", true)).unwrap();
        apply(&path, "bob", set("b", false)).unwrap();
        apply(&path, "alice", set("a2", false)).unwrap();
        let f = PasswordFile::load(&path).unwrap();
        assert!(f.verify("alice", b"a2") && f.verify("bob", b"b"));
        apply(&path, "alice", Change::Delete).unwrap();
        let e = apply(&path, "alice", Change::Delete).unwrap_err();
        assert!(format!("{e:#}").contains("alice"), "{e:#}");
        apply(&path, "carol", set("c", true)).unwrap();
        let f = PasswordFile::load(&path).unwrap();
        assert_eq!(f.users().collect::<Vec<_>>(), ["carol"], "-c starts afresh");
        assert!(apply(&path, "a:b", set("x", false)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
