//! What SIGHUP does: every password file, ACL file and TLS certificate is read again.
//! Whatever fails to load keeps its previous contents; connections stay open.

use std::net::SocketAddr;
use std::sync::Arc;

use starling_auth::{AclAuthorizer, PasswordAuthenticator};
use tracing::{info, warn};

use crate::tls::TlsListener;

/// What SIGHUP reloads.
#[derive(Debug, Default)]
pub(crate) struct Reloadable {
    pub(crate) passwords: Vec<Arc<PasswordAuthenticator>>,
    pub(crate) acls: Vec<Arc<AclAuthorizer>>,
    pub(crate) tls: Vec<(SocketAddr, Arc<TlsListener>)>,
}

impl Reloadable {
    /// Reads every password file, ACL file and TLS certificate again. Whatever fails to load
    /// keeps its previous contents; the errors are logged and returned.
    pub(crate) fn reload(&self) -> Vec<anyhow::Error> {
        self.reload_report().1
    }

    /// Like [`Reloadable::reload`], also naming what was reloaded.
    pub(crate) fn reload_report(&self) -> (Vec<String>, Vec<anyhow::Error>) {
        let mut reloaded = Vec::new();
        let mut errors = Vec::new();
        for p in &self.passwords {
            match p.reload() {
                Ok(n) => {
                    info!(path = %p.path().display(), users = n, "password file reloaded");
                    reloaded.push(format!("password file {} ({n} users)", p.path().display()));
                }
                Err(e) => {
                    warn!("password file not reloaded, keeping the previous one: {e}");
                    errors.push(e.into());
                }
            }
        }
        for a in &self.acls {
            match a.reload() {
                Ok(n) => {
                    info!(path = %a.path().display(), rules = n, "ACL file reloaded");
                    reloaded.push(format!("ACL file {} ({n} rules)", a.path().display()));
                }
                Err(e) => {
                    warn!("ACL file not reloaded, keeping the previous rules: {e}");
                    errors.push(e.into());
                }
            }
        }
        for (addr, t) in &self.tls {
            match t.reload() {
                Ok(()) => {
                    info!(listener = %addr, "TLS certificates reloaded");
                    reloaded.push(format!("TLS certificates of {addr}"));
                }
                Err(e) => {
                    warn!(listener = %addr, "TLS certificates not reloaded, keeping the previous ones: {e:#}");
                    errors.push(e);
                }
            }
        }
        (reloaded, errors)
    }
}
