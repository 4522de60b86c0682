//! API keys for the HTTP listener, and `starling apikey` that manages them.
//!
//! A key is `stk_` and 43 characters of base64url (32 random bytes). It is printed once, when
//! it is created; the file keeps only its SHA-256 (a key has 256 bits of entropy, so a slow
//! hash would add nothing), one key per line:
//!
//! ```text
//! # name role sha256-hex
//! grafana viewer 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! The running broker reads the file again whenever its modification time changes, so a key
//! created or deleted while it runs counts at the next request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, bail};
use base64::Engine;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read and change.
    Admin,
}

impl Role {
    /// Its name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// One key: its name, role and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// Who or what uses it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    hash: [u8; 32],
}

/// The contents of an API key file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFile {
    entries: Vec<KeyEntry>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyFile {
    /// Parses a key file; errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let mut parts = line.split_whitespace();
            let (Some(name), Some(role), Some(hex), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("line {n}: expected \"NAME ROLE SHA256\""));
            };
            if !valid_name(name) {
                return Err(format!("line {n}: invalid name {name:?}"));
            }
            let role = Role::parse(role)
                .ok_or_else(|| format!("line {n}: role must be admin or viewer, got {role:?}"))?;
            let hash = decode_hex(hex).ok_or_else(|| format!("line {n}: invalid SHA-256"))?;
            if entries.iter().any(|e: &KeyEntry| e.name == name) {
                return Err(format!("line {n}: {name:?} is listed twice"));
            }
            entries.push(KeyEntry {
                name: name.to_owned(),
                role,
                hash,
            });
        }
        Ok(Self { entries })
    }

    /// Reads a key file; a missing file has no keys.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map_err(|e| anyhow::anyhow!("invalid API key file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::from("# name role sha256 (written by `starling apikey`)\n");
        for e in &self.entries {
            out.push_str(&format!(
                "{} {} {}\n",
                e.name,
                e.role.name(),
                encode_hex(&e.hash)
            ));
        }
        out
    }

    /// Every key.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Makes a new key named `name` (replacing one of that name); returns the key, which is
    /// not kept.
    pub fn create(&mut self, name: &str, role: Role) -> anyhow::Result<String> {
        if !valid_name(name) {
            bail!("invalid key name {name:?}: 1 to 64 of A-Z a-z 0-9 - _ . @");
        }
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let key = format!(
            "stk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        self.entries.retain(|e| e.name != name);
        self.entries.push(KeyEntry {
            name: name.to_owned(),
            role,
            hash: hash_key(&key),
        });
        Ok(key)
    }

    /// Removes the key named `name`; whether there was one.
    pub fn delete(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.name != name);
        self.entries.len() != before
    }

    /// The entry whose key is `key` (compared in constant time).
    pub fn verify(&self, key: &str) -> Option<&KeyEntry> {
        let h = hash_key(key);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.hash.ct_eq(&h)) {
                found = Some(e);
            }
        }
        found
    }

    /// Writes the file atomically, readable by its owner only on Unix.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!(".api-keys.tmp{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = options.open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("cannot write {}", path.display()))
    }
}

fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The key file as the running broker sees it: read again when its modification time
/// changes. A file that becomes unreadable or invalid keeps the last good contents (logged).
#[derive(Debug)]
pub struct KeyCache {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Arc<KeyFile>)>,
}

impl KeyCache {
    /// Loads `path` (missing: no keys). An invalid file is an error at start.
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let mtime = modified(&path);
        let file = KeyFile::load(&path)?;
        Ok(Self {
            path,
            cached: Mutex::new((mtime, Arc::new(file))),
        })
    }

    /// The current keys.
    pub fn current(&self) -> Arc<KeyFile> {
        let mtime = modified(&self.path);
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if mtime != c.0 {
            match KeyFile::load(&self.path) {
                Ok(f) => {
                    tracing::info!(path = %self.path.display(), keys = f.entries.len(), "API key file reloaded");
                    *c = (mtime, Arc::new(f));
                }
                Err(e) => {
                    tracing::warn!("API key file not reloaded, keeping the previous keys: {e:#}");
                    c.0 = mtime;
                }
            }
        }
        c.1.clone()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Arguments of `starling apikey`.
#[derive(Debug, clap::Args)]
#[command(about = "Manage the HTTP API's keys")]
pub struct ApiKeyArgs {
    #[command(subcommand)]
    command: ApiKeyCommand,
    /// The key file (default: `[http] api_keys_file` of --config, else `api-keys` in the data
    /// directory).
    #[arg(long, global = true, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The broker's config file, to find the key file.
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ApiKeyCommand {
    /// Create a key (or replace the key of that name) and print it; it is not shown again.
    Create {
        /// Who or what will use it.
        name: String,
        /// admin (read and change) or viewer (read only).
        #[arg(long, default_value = "viewer", value_parser = ["admin", "viewer"])]
        role: String,
    },
    /// List the keys' names and roles.
    List,
    /// Delete a key.
    Delete {
        /// Its name.
        name: String,
    },
}

/// Runs `starling apikey`.
pub fn run(args: ApiKeyArgs) -> anyhow::Result<()> {
    let path = match (&args.file, &args.config) {
        (Some(f), _) => f.clone(),
        (None, config) => {
            // The broker's view: the file (or the defaults) with the STARLING_* overrides.
            let overrides = crate::config::env::Overrides::from_env()?;
            let config = Config::load_with_env(config.as_deref(), &overrides)?;
            config.http.api_keys_path(&config.data_dir)
        }
    };
    let mut file = KeyFile::load(&path)?;
    match args.command {
        ApiKeyCommand::Create { name, role } => {
            let role = Role::parse(&role).unwrap_or(Role::Viewer);
            let key = file.create(&name, role)?;
            file.save(&path)?;
            eprintln!(
                "created {} key {name:?} in {}; it is shown only now:",
                role.name(),
                path.display()
            );
            println!("{key}");
        }
        ApiKeyCommand::List => {
            for e in file.entries() {
                println!("{} {}", e.name, e.role.name());
            }
        }
        ApiKeyCommand::Delete { name } => {
            if !file.delete(&name) {
                bail!("no key named {name:?} in {}", path.display());
            }
            file.save(&path)?;
            eprintln!("deleted key {name:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_verifies_and_only_its_hash_is_written() {
        let mut f = KeyFile::default();
        let key = f.create("grafana", Role::Viewer).unwrap();
        assert!(key.starts_with("stk_") && key.len() == 4 + 43);
        let text = f.to_text();
        assert!(!text.contains(&key));
        let back = KeyFile::parse(&text).unwrap();
        assert_eq!(back, f);
        let e = back.verify(&key).unwrap();
        assert_eq!((e.name.as_str(), e.role), ("grafana", Role::Viewer));
        assert!(back.verify("stk_wrong").is_none());
        let again = f.create("grafana", Role::Admin).unwrap();
        assert!(f.verify(&key).is_none(), "a replaced key no longer works");
        assert_eq!(f.verify(&again).map(|e| e.role), Some(Role::Admin));
        assert!(f.delete("grafana"));
        assert!(f.is_empty());
    }

    #[test]
    fn bad_lines_are_named() {
        let h = "0".repeat(64);
        for (text, want) in [
            ("a admin".to_string(), "line 1: expected"),
            (format!("a root {h}"), "line 1: role must be"),
            ("a admin 12".to_string(), "line 1: invalid SHA-256"),
            (format!("# c\nb/c admin {h}"), "line 2: invalid name"),
            (
                format!("a admin {h}\na viewer {h}"),
                "line 2: \"a\" is listed twice",
            ),
        ] {
            let e = KeyFile::parse(&text).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
