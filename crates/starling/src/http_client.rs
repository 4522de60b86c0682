//! The HTTP client for the services Starling calls (authentication services, token
//! introspection, key servers, webhooks): one way to build it, with the same TLS, proxy,
//! redirect and timeout rules for all.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

/// An HTTP client for a configured service: rustls, no proxy from the environment, no
/// redirects (a 3xx is a failure), `timeout` per request, at most `max_idle` idle
/// connections kept; trusting only `ca_file` (a private CA) when given, else the system's
/// roots. `ca_key` names `ca_file` in errors.
pub(crate) fn build(
    timeout: Duration,
    max_idle: usize,
    ca_file: Option<&Path>,
    ca_key: &str,
) -> anyhow::Result<reqwest::Client> {
    let b = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("starling/", env!("CARGO_PKG_VERSION")));
    trust_only(b, ca_file, ca_key)?
        .build()
        .context("cannot build the HTTP client")
}

/// `b` trusting only the certificates of `ca_file` (a private CA: the service's certificate
/// must chain to it) when given, else unchanged (the system's roots). `ca_key` names
/// `ca_file` in errors.
pub(crate) fn trust_only(
    mut b: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
    ca_key: &str,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(path) = ca_file else {
        return Ok(b);
    };
    let pem =
        std::fs::read(path).with_context(|| format!("{ca_key}: cannot read {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{ca_key}: invalid PEM certificate in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{ca_key}: no certificate in {}", path.display());
    }
    b = b.tls_built_in_root_certs(false);
    for c in certs {
        b = b.add_root_certificate(c);
    }
    Ok(b)
}
