//! MQTT over QUIC, black box: the `mqtt5` crate's QUIC client (an implementation written
//! elsewhere) publishing and subscribing at QoS 0, 1 and 2 and resuming its session; a client
//! whose UDP port changes mid-session; a lossy, reordering UDP relay between clients and the
//! broker; the listener's limits, bans, keep-alive, 0-RTT setting and shutdown; and
//! `starling pub`/`sub --quic`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../common/mod.rs"]
mod common;
mod conformance;
mod listener;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, start_server_with};
use starling::config::{Config, ListenerConfig};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A CA and a server certificate for localhost / 127.0.0.1, in files.
pub(crate) struct Pki {
    dir: TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub(crate) ca_file: PathBuf,
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Starling QUIC test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &ca).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_pem = ca.pem();
        Self {
            ca_file: write("ca.pem", &ca_pem),
            cert_file: write("server.pem", &cert.pem()),
            key_file: write("server.key", &key.serialize_pem()),
            ca_pem: ca_pem.into_bytes(),
            ca,
            dir,
        }
    }

    /// Writes a file in the certificates' directory.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A client certificate with this CN, signed by the CA: PEM certificate and key.
    pub(crate) fn client_pem(&self, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }

    /// A QUIC listener on 127.0.0.1, port 0, with this certificate.
    pub(crate) fn listener(&self) -> ListenerConfig {
        let mut l = ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
        l.protocol = "quic".into();
        l.cert_file = Some(self.cert_file.clone());
        l.key_file = Some(self.key_file.clone());
        l
    }

    /// A rustls client configuration trusting this CA.
    pub(crate) fn client_tls(&self) -> rustls::ClientConfig {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&self.ca_file).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

/// A broker with a TCP listener (`addr`, first) and a QUIC listener (second), state in
/// memory, adjusted by `tweak`.
pub(crate) struct QuicServer {
    pub(crate) server: TestServer,
    pub(crate) quic: SocketAddr,
    pub(crate) pki: Pki,
}

pub(crate) async fn start(tweak: impl FnOnce(&mut Config, &Pki)) -> QuicServer {
    let pki = Pki::new();
    let mut config = Config {
        listeners: vec![
            ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            pki.listener(),
        ],
        ..Config::default()
    };
    config.storage.durability = starling::config::Durability::Memory;
    config.http.enabled = false;
    tweak(&mut config, &pki);
    let server = start_server_with(&config).await;
    let quic = server.addrs()[1];
    QuicServer { server, quic, pki }
}

/// An `mqtt5` client that trusts the test CA.
pub(crate) async fn mqtt5_client(id: &str, pki: &Pki) -> mqtt5::MqttClient {
    let client = mqtt5::MqttClient::new(id);
    client
        .set_tls_config(None, None, Some(pki.ca_pem.clone()))
        .await;
    client
}

/// The `quics://` address of a QUIC listener (the client checks the certificate for
/// `localhost`).
pub(crate) fn url(addr: SocketAddr) -> String {
    format!("quics://{addr}")
}

/// Messages a subscription's callback received, through a bounded channel (a full channel
/// drops the message, which the tests then miss and report).
pub(crate) fn inbox() -> (
    impl Fn(mqtt5::Message) + Send + Sync + 'static,
    mpsc::Receiver<mqtt5::Message>,
) {
    let (tx, rx) = mpsc::channel(4096);
    (move |m| drop(tx.try_send(m)), rx)
}

/// The next message of `rx`, within `within`.
pub(crate) async fn next(
    rx: &mut mpsc::Receiver<mqtt5::Message>,
    within: Duration,
) -> mqtt5::Message {
    timeout(within, rx.recv())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
}
