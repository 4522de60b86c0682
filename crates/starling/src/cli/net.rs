//! Opening the client commands' transport: TCP (optionally bound to a local address), a Unix
//! socket, TLS over either (rustls: CA file or directory, the system's CAs, a client
//! certificate, `--insecure` to skip the host name check only), MQTT over WebSocket (`ws://`,
//! `wss://`, subprotocol `mqtt`), and MQTT over QUIC (`quic://`, `--quic`: the same TLS
//! settings). Whatever the transport, the result is one byte stream.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::opts::{ConnectOpts, Endpoint, Scheme};
use crate::ws::WsStream;

/// A byte stream to the broker.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why the transport could not be opened; the message is what the command prints.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A socket error (connection refused, host not found, ...), as mosquitto prints it.
    #[error("Error: {}", io_message(.0))]
    Io(#[from] io::Error),
    /// The TLS settings could not be loaded.
    #[error("Error: {0}")]
    TlsSetup(String),
    /// The TLS or WebSocket handshake failed.
    #[error("Error: {0}")]
    Handshake(String),
}

/// An I/O error's text without Rust's " (os error N)" suffix, like `strerror`.
pub fn io_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s.get(..i).unwrap_or(&s).to_string(),
        None => s,
    }
}

/// Opens the transport `ep` describes.
pub async fn open(ep: &Endpoint, opts: &ConnectOpts) -> Result<Box<dyn Stream>, NetError> {
    if ep.scheme == Scheme::Quic {
        return quic(ep, opts).await;
    }
    let stream: Box<dyn Stream> = match &ep.unix {
        Some(path) => Box::new(unix(path).await?),
        None => Box::new(tcp(ep, opts).await?),
    };
    let stream: Box<dyn Stream> = if ep.scheme.tls() {
        let config = client_config(opts)?;
        let host = ep.tls_name.clone().unwrap_or_else(|| ep.host.clone());
        let name = ServerName::try_from(host.clone())
            .map_err(|_| NetError::TlsSetup(format!("invalid server name \"{host}\"")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| NetError::Handshake(format!("TLS: {}", io_message(&e))))?;
        Box::new(tls)
    } else {
        stream
    };
    match ep.scheme {
        Scheme::Ws | Scheme::Wss => websocket(ep, stream).await,
        Scheme::Mqtt | Scheme::Mqtts | Scheme::Quic => Ok(stream),
    }
}

/// MQTT over QUIC, to each address of the host in turn, verified as TLS would be.
async fn quic(ep: &Endpoint, opts: &ConnectOpts) -> Result<Box<dyn Stream>, NetError> {
    if opts.tls_version.as_deref() == Some("tlsv1.2") {
        return Err(tls_err("QUIC needs TLS 1.3"));
    }
    let config = client_config(opts)?;
    let name = ep.tls_name.clone().unwrap_or_else(|| ep.host.clone());
    let mut last = None;
    for addr in tokio::net::lookup_host((ep.host.as_str(), ep.port)).await? {
        match crate::quic::client::connect(addr, &name, config.clone(), opts.bind_address).await {
            Ok(s) => return Ok(Box::new(s)),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => NetError::Handshake(e.to_string()),
        None => io::Error::new(io::ErrorKind::NotFound, "host not found").into(),
    })
}

#[cfg(unix)]
async fn unix(path: &Path) -> Result<tokio::net::UnixStream, NetError> {
    Ok(tokio::net::UnixStream::connect(path).await?)
}

#[cfg(not(unix))]
async fn unix(_path: &Path) -> Result<TcpStream, NetError> {
    Err(NetError::TlsSetup(
        "Unix sockets are not supported here".into(),
    ))
}

async fn tcp(ep: &Endpoint, opts: &ConnectOpts) -> Result<TcpStream, NetError> {
    let mut last = None;
    for addr in tokio::net::lookup_host((ep.host.as_str(), ep.port)).await? {
        match tcp_to(addr, opts).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host not found"))
        .into())
}

async fn tcp_to(addr: SocketAddr, opts: &ConnectOpts) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = opts.bind_address {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(opts.nodelay)?;
    Ok(stream)
}

async fn websocket(ep: &Endpoint, stream: Box<dyn Stream>) -> Result<Box<dyn Stream>, NetError> {
    let scheme = if ep.scheme.tls() { "wss" } else { "ws" };
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    let url = format!("{scheme}://{host}:{}{}", ep.port, ep.path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| NetError::Handshake(format!("WebSocket URL {url}: {e}")))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| NetError::Handshake(format!("WebSocket: {e}")))?;
    Ok(Box::new(WsStream::new(ws)))
}

fn tls_err(e: impl std::fmt::Display) -> NetError {
    NetError::TlsSetup(e.to_string())
}

fn add_pem_certs(roots: &mut RootCertStore, path: &Path) -> Result<usize, NetError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("invalid PEM in {}: {e}", path.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    Ok(added)
}

/// The system's CA bundle (Debian's path first).
const SYSTEM_CAS: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn client_config(opts: &ConnectOpts) -> Result<ClientConfig, NetError> {
    let mut roots = RootCertStore::empty();
    if let Some(file) = &opts.cafile
        && add_pem_certs(&mut roots, file)? == 0
    {
        return Err(tls_err(format!("no CA certificate in {}", file.display())));
    }
    if let Some(dir) = &opts.capath {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| tls_err(format!("cannot read {}: {}", dir.display(), io_message(&e))))?;
        for entry in entries.flatten() {
            // Files that are not PEM certificates (hash links to them are) are skipped.
            let _ = add_pem_certs(&mut roots, &entry.path());
        }
    }
    let no_ca_given = opts.cafile.is_none() && opts.capath.is_none();
    if (opts.tls_use_os_certs || no_ca_given)
        && let Some(bundle) = SYSTEM_CAS.iter().map(Path::new).find(|p| p.exists())
    {
        add_pem_certs(&mut roots, bundle)?;
    }
    if roots.is_empty() {
        return Err(tls_err(
            "no trusted CA certificate (use --cafile or --capath)",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match opts.tls_version.as_deref() {
        Some("tlsv1.2") => &[&rustls::version::TLS12],
        Some("tlsv1.3") => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(tls_err)?;
    let roots = Arc::new(roots);
    let builder = if opts.insecure {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(tls_err)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName { inner }))
    } else {
        builder.with_root_certificates(roots)
    };
    match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_err(format!("cannot read {}: {e}", cert.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err(format!("invalid PEM in {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_err(format!("cannot read a key from {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The TLS settings `starling ctl` uses for an https:// URL: `cafile`, or the system's CAs.
pub fn https_config(cafile: Option<&Path>) -> Result<ClientConfig, NetError> {
    let mut roots = RootCertStore::empty();
    match cafile {
        Some(file) => {
            add_pem_certs(&mut roots, file)?;
        }
        None => {
            if let Some(bundle) = SYSTEM_CAS.iter().map(Path::new).find(|p| p.exists()) {
                add_pem_certs(&mut roots, bundle)?;
            }
        }
    }
    if roots.is_empty() {
        return Err(tls_err("no trusted CA certificate (use --cafile)"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `--insecure`: the chain is verified as usual, only the host name is not checked.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
