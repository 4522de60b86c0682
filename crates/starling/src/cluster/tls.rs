//! TLS between the nodes of a cluster (`[cluster] ca_file`, `cert_file`, `key_file`): every
//! inter-node stream is mutual TLS (1.3), each node presenting its certificate and taking a
//! peer's only if it chains to the cluster's CA. That is what makes a node a member: names
//! are not checked (nodes dial each other by address, often an IP), the CA being the
//! cluster's own. A node certificate must allow client authentication (extended key usage
//! `clientAuth` beside `serverAuth`, or none at all), since each node is both. Without these
//! settings the streams are plain TCP ([`ClusterDial`] dials either way).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use starling_cluster::net::{Dial, TcpDial};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::cluster::ClusterConfig;
use crate::tls::read_certs;

/// The name a node asks for when it dials (not checked: see the module's comment).
const NAME: &str = "starling-cluster";

/// This node's TLS between nodes: how it dials and how it accepts.
pub struct ClusterTls {
    client: Arc<ClientConfig>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Loads the CA, certificate and key named in `c`; `None` if TLS between nodes is off.
    pub fn load(c: &ClusterConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let (Some(ca_file), Some(cert_file), Some(key_file)) =
            (&c.ca_file, &c.cert_file, &c.key_file)
        else {
            // All three or none (checked with the rest of the configuration).
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca_file)? {
            roots
                .add(cert)
                .with_context(|| format!("invalid CA certificate in {}", ca_file.display()))?;
        }
        let certs = read_certs(cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .with_context(|| format!("cannot read a private key from {}", key_file.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("cluster CA")?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(certs.clone(), key.clone_key())
            .with_context(|| {
                format!(
                    "certificate {} does not go with key {}",
                    cert_file.display(),
                    key_file.display()
                )
            })?;
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignedByCa { verifier, provider }))
            .with_client_auth_cert(certs, key)
            .context("this node's certificate as a client")?;
        Ok(Some(Arc::new(ClusterTls {
            client: Arc::new(client),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })))
    }

    /// Completes the handshake of an accepted stream (the peer must present a certificate
    /// the cluster's CA signed).
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

/// A peer's certificate is good if it chains to the cluster's CA, whatever its name: the
/// client-certificate check, applied to the server.
#[derive(Debug)]
struct SignedByCa {
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SignedByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Dials peers over TCP from this node's address, with TLS if the cluster has it.
#[derive(Clone, Debug)]
pub struct ClusterDial {
    tcp: TcpDial,
    tls: Option<Arc<ClusterTls>>,
}

impl ClusterDial {
    /// Dials with `tcp`, then TLS with `tls` if set.
    pub fn new(tcp: TcpDial, tls: Option<Arc<ClusterTls>>) -> Self {
        Self { tcp, tls }
    }
}

/// A stream to a peer: plain, or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Dial for ClusterDial {
    type Stream = Stream;

    async fn dial(&self, addr: &str) -> io::Result<Stream> {
        let tcp = self.tcp.dial(addr).await?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let name = ServerName::try_from(NAME)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let s = TlsConnector::from(tls.client.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Stream::Tls(Box::new(s)))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
