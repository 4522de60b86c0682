//! Dynamic security: clients, groups, roles and API keys managed at runtime through the
//! admin API (as mosquitto's dynamic-security plugin, plus the keys), kept in the broker's
//! store. [`DynamicSecurity`] is both an authentication backend (`auth = ["dynamic"]`: the
//! usernames it knows, with their argon2id passwords, and any password that is an API key)
//! and an authorization backend (`acl = ["dynamic"]`: each user's or key's roles, whose
//! ordered rules decide by the first match; the anonymous group's for anonymous clients).
//!
//! - `model.rs`: the document, its bounds and its edits; `membership.rs`: giving and taking
//!   roles and groups; `keys.rs`: the API keys; `rules.rs`: the document compiled for
//!   matching; `store.rs`: the stored form and the wait for a change's commit.
//! - A change is made on a copy of the document, compiled, committed to the store, and only
//!   then swapped in (one pointer swap: the broker's checks never wait), and the generation
//!   goes up, so connections forget the answers they remembered: the new rules apply to the
//!   next publish and the next delivery of every connected client. One change at a time.

pub mod keys;
mod membership;
pub mod model;
mod rules;
mod store;

#[cfg(test)]
mod key_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use starling_auth::{
    AclBackend, Action, Answer, AuthBackend, Client, ConnectInfo, DenyReason, Grant, HashPool,
    Verdict,
};
use starling_broker::persist::Journal;
use tokio::sync::Mutex;

pub use model::{Document, RuleAction};
pub use store::SETTING_KEY;

use rules::Compiled;

/// How long a change waits for the one before it to finish.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a change waits for its commit before it is answered as not stored yet (it still
/// takes effect if the commit succeeds later).
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Why dynamic security refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    /// No client, group, role or key by that name.
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or is still in use.
    #[error("{0}")]
    Conflict(String),
    /// A field is invalid; `field` names it (`roles[1].name`, `filter`).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A bound would be exceeded.
    #[error("{what}: at most {max}")]
    TooMany {
        /// What there would be too many of.
        what: String,
        /// The bound.
        max: usize,
    },
    /// The change was not stored, so it was not made (or not yet: see the message).
    #[error("the change was not stored: {0}")]
    NotStored(String),
    /// Another change is still being made.
    #[error("another change is still being stored; try again")]
    Busy,
    /// A stored or initial document cannot be used.
    #[error("dynamic security document ({origin}): {message}")]
    Document {
        /// Where it comes from (the store, a file).
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// `[auth.dynamic]`: turns dynamic security on (listeners name it `"dynamic"` in their
/// `auth` and `acl` chains, and `/api/v1/dynsec` manages it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicConfig {
    /// A document to start from while the store holds none (a first start, or durability
    /// `memory`): the stored form, as `GET /api/v1/dynsec` shows it plus `password_hash`es.
    /// Once a change made through the API is stored, the store's document is used instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_file: Option<PathBuf>,
}

/// Clients, groups, roles and API keys managed at runtime; see the module documentation.
#[derive(Debug)]
pub struct DynamicSecurity {
    state: ArcSwap<Compiled>,
    /// Goes up after every swap (see [`AclBackend::generation`]).
    generation: AtomicU64,
    /// Held from a change's edit until it is swapped in or has failed: one change at a time,
    /// each made on the document the previous one left.
    writer: Arc<Mutex<()>>,
}

impl Default for DynamicSecurity {
    fn default() -> Self {
        Self::new()
    }
}

impl DynamicSecurity {
    /// Empty: no clients, groups or roles.
    pub fn new() -> Self {
        Self {
            state: ArcSwap::from_pointee(Compiled::empty()),
            generation: AtomicU64::new(1),
            writer: Arc::new(Mutex::new(())),
        }
    }

    /// The backend `[auth.dynamic]` configures, holding its `init_file` (read and checked
    /// here: an invalid one stops the broker, and fails `starling check-config`) or nothing,
    /// until [`DynamicSecurity::restore`] gives it the store's document.
    pub fn build(config: &DynamicConfig) -> Result<Arc<Self>, DynsecError> {
        let d = Self::new();
        if let Some(path) = &config.init_file {
            d.install(Compiled::build(Arc::new(store::read_file(path)?))?);
        }
        Ok(Arc::new(d))
    }

    /// Takes the document the store holds ([`SETTING_KEY`], read when it was opened), which
    /// wins over the initial file; `None` (nothing stored yet, or durability `memory`) keeps
    /// what it has. An invalid document is an error naming the store.
    pub fn restore(&self, stored: Option<&[u8]>) -> Result<(), DynsecError> {
        if let Some(bytes) = stored {
            let doc = store::decode(bytes, "the store")?;
            self.install(Compiled::build(Arc::new(doc))?);
        }
        Ok(())
    }

    /// The document in force.
    pub fn document(&self) -> Arc<Document> {
        self.state.load().doc.clone()
    }

    /// Makes a change: `edit` changes a copy of the document (and may refuse); the result is
    /// validated, compiled, committed through `journal` (none: kept in memory only) and
    /// swapped in, and then `applied` runs (it disconnects the clients the change concerns).
    /// Answers once the change is in force, or with why not. A commit that is not done within
    /// [`COMMIT_WAIT`] is answered [`DynsecError::NotStored`] but still takes effect if it
    /// succeeds later: the next change waits for it.
    pub async fn change(
        self: &Arc<Self>,
        journal: Option<Arc<Journal>>,
        edit: impl FnOnce(&mut Document) -> Result<(), DynsecError>,
        applied: impl FnOnce() + Send + 'static,
    ) -> Result<(), DynsecError> {
        let guard = tokio::time::timeout(LOCK_WAIT, self.writer.clone().lock_owned())
            .await
            .map_err(|_| DynsecError::Busy)?;
        let mut doc = Document::clone(&self.document());
        edit(&mut doc)?;
        // Validating, encoding and compiling a large document (password hashes to parse)
        // takes a while: off the async threads.
        let (compiled, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = store::encode(&doc)?;
            Ok::<_, DynsecError>((Compiled::build(Arc::new(doc))?, bytes))
        })
        .await
        .map_err(|e| DynsecError::NotStored(format!("the change failed: {e}")))??;
        let Some(journal) = journal else {
            self.install(compiled);
            applied();
            return Ok(());
        };
        // Waited for in a task of its own, which holds the writer's lock: if this request is
        // dropped (a timeout, the client gone), the change still takes effect once committed,
        // and no other change starts from the document before it.
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = store::commit(&journal, bytes).await;
            if result.is_ok() {
                this.install(compiled);
                applied();
            }
            drop(guard);
            let _ = tx.send(result);
        });
        match tokio::time::timeout(COMMIT_WAIT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DynsecError::NotStored("the change was abandoned".into())),
            Err(_) => Err(DynsecError::NotStored(format!(
                "the store has not committed it within {} s; it takes effect if it does",
                COMMIT_WAIT.as_secs()
            ))),
        }
    }

    /// Swaps `compiled` in, then raises the generation. In that order: a connection reads the
    /// generation before it asks, so an answer from the old rules is never remembered under
    /// the new generation.
    fn install(&self, compiled: Compiled) {
        self.state.store(Arc::new(compiled));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl AuthBackend for DynamicSecurity {
    fn kind(&self) -> &'static str {
        "dynamic"
    }

    /// A password that is an API key (`stk_…`) is this backend's to answer, whatever the
    /// username: see [`keys`]. Otherwise, a username it does not know, or a client without a
    /// password here: not its client. The password is checked first, so that a wrong one
    /// tells nothing about the rest; then a disabled client and a client id other than the
    /// fixed one are refused (0x87). A key's name with anything but the key: 0x86.
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        let state = self.state.load();
        if let Some(password) = info.password
            && keys::is_key(password)
        {
            return Answer::Now(state.keys.authenticate(info, password, keys::now()));
        }
        let Some(username) = info.username else {
            return Answer::Now(Verdict::Pass);
        };
        let Some(user) = state.user(username) else {
            return Answer::Now(Verdict::Pass);
        };
        if user.key {
            return Answer::Now(Verdict::Deny(DenyReason::BadUserNameOrPassword));
        }
        // The answer once the password (if this backend holds one) is right.
        let after = if user.disabled
            || user
                .client_id
                .as_deref()
                .is_some_and(|id| id != info.client_id)
        {
            Verdict::Deny(DenyReason::NotAuthorized)
        } else if user.hash.is_none() {
            // Authorized here, authenticated elsewhere (a certificate, a token).
            Verdict::Pass
        } else {
            Verdict::Allow(Grant::user(Some(username.to_owned())))
        };
        let Some(hash) = user.hash.clone() else {
            return Answer::Now(after);
        };
        // The hash runs on the hashing pool, off the connection's thread (a cheap one now).
        if hash.is_cheap() {
            return Answer::Now(match info.password.is_some_and(|p| hash.verify(p)) {
                true => after,
                false => Verdict::Deny(DenyReason::BadUserNameOrPassword),
            });
        }
        let password = info.password.map(<[u8]>::to_vec);
        let check = move || match password.is_some_and(|p| hash.verify(&p)) {
            true => after,
            false => Verdict::Deny(DenyReason::BadUserNameOrPassword),
        };
        let busy = Verdict::Deny(DenyReason::Busy);
        match HashPool::shared().run(check, busy.clone()) {
            Some(later) => Answer::Later(later),
            None => Answer::Now(busy),
        }
    }
}

impl AclBackend for DynamicSecurity {
    fn kind(&self) -> &'static str {
        "dynamic"
    }

    fn check(&self, client: &Client<'_>, action: Action, topic: &str) -> Answer<Option<bool>> {
        let action = match action {
            Action::Publish => RuleAction::Publish,
            Action::Subscribe => RuleAction::Subscribe,
            Action::Read => RuleAction::Receive,
        };
        Answer::Now(self.state.load().decide(client, action, topic))
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::SeqCst))
    }
}
