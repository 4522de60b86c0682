//! TLS listeners (rustls with the ring provider): certificate chain and key from PEM files,
//! TLS 1.2 and 1.3, optional client certificate verification against a CA, and the client
//! certificate's identity for use as the username. The configuration can be rebuilt from the
//! files at any time (SIGHUP); connections already open keep the one they started with.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use starling_auth::cert::{IdentitySource, certificate_identity};
use tokio_rustls::TlsAcceptor;

use crate::config::{IdentityField, ListenerConfig};

/// A listener's TLS settings and its current acceptor.
#[derive(Debug)]
pub struct TlsListener {
    settings: ListenerConfig,
    config: ArcSwap<ServerConfig>,
}

impl TlsListener {
    /// Loads the certificate, key and CA of `settings`.
    pub fn load(settings: &ListenerConfig) -> anyhow::Result<Self> {
        let config = server_config(settings)?;
        Ok(Self {
            settings: settings.clone(),
            config: ArcSwap::new(config),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        Arc::new(TlsAcceptor::from(self.config.load_full()))
    }

    /// The current rustls configuration (QUIC listeners build theirs from it).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Reads the files again; on error the current certificates stay in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.settings)?;
        self.config.store(config);
        Ok(())
    }

    /// Which certificate field becomes the username, if any.
    pub fn identity_source(&self) -> Option<IdentitySource> {
        self.settings
            .use_identity_as_username
            .map(|field| match field {
                IdentityField::Cn => IdentitySource::CommonName,
                IdentityField::Subject => IdentitySource::Subject,
            })
    }
}

/// The identity (CN or subject) of a verified client certificate.
pub fn peer_identity(
    conn: &rustls::ServerConnection,
    source: Option<IdentitySource>,
) -> Option<String> {
    let source = source?;
    let cert = conn.peer_certificates()?.first()?;
    certificate_identity(cert.as_ref(), source)
}

pub(crate) fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM certificate in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// Builds the rustls configuration of a `tls` or `wss` listener.
pub fn server_config(l: &ListenerConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let (Some(cert_file), Some(key_file)) = (&l.cert_file, &l.key_file) else {
        bail!("a TLS listener needs cert_file and key_file");
    };
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("cannot read a private key from {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?;
    let builder = match &l.ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file)? {
                roots
                    .add(cert)
                    .with_context(|| format!("invalid CA certificate in {}", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if l.require_certificate {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "certificate {} does not go with key {}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(Arc::new(config))
}
