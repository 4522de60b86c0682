//! TLS: rustls clients, client certificates, identity as username, certificate reloads.

use super::*;

/// A CA, a server certificate for localhost / 127.0.0.1 and client certificates, in files.
pub(crate) struct Pki {
    pub(crate) ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub(crate) ca_file: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &TempDir, prefix: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Starling test CA {prefix}"),
        );
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
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca).unwrap();
        let ca_file = dir.write(&format!("{prefix}ca.pem"), &ca.pem());
        let cert_file = dir.write(&format!("{prefix}server.pem"), &cert.pem());
        let key_file = dir.write(&format!("{prefix}server.key"), &key.serialize_pem());
        Self {
            ca,
            ca_file,
            cert_file,
            key_file,
        }
    }

    /// A client certificate with this CN (and O = Starling tests), as DER chain and key.
    pub(crate) fn client(
        &self,
        cn: &str,
    ) -> (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Starling tests");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], key_der)
    }

    pub(crate) fn tls_listener(&self, protocol: &str) -> ListenerConfig {
        let mut l = listener(protocol);
        l.cert_file = Some(self.cert_file.clone());
        l.key_file = Some(self.key_file.clone());
        l
    }
}

pub(crate) fn client_config(
    ca_file: &Path,
    identity: Option<(
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

pub(crate) type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

pub(crate) async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")))
}

/// MQTT over any byte stream, through the codec.
pub(crate) struct StreamClient<S> {
    pub(crate) stream: S,
    pub(crate) rbuf: BytesMut,
    pub(crate) version: ProtocolVersion,
}

impl<S: AsyncRead + AsyncWrite + Unpin> StreamClient<S> {
    pub(crate) fn new(stream: S, version: ProtocolVersion) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            version,
        }
    }

    pub(crate) async fn send(&mut self, p: &Packet) {
        let mut buf = BytesMut::new();
        starling_proto::encode(p, self.version, &mut buf).unwrap();
        self.stream.write_all(&buf).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next packet, or `None` when the connection closes (or fails).
    pub(crate) async fn recv(&mut self) -> Option<Packet> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(p) =
                starling_proto::decode(&mut self.rbuf, self.version, &DecodeLimits::default())
                    .unwrap()
            {
                return Some(p);
            }
            self.rbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => panic!("nothing received within {WAIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub(crate) async fn connect(&mut self, c: Connect) -> ConnAck {
        self.send(&Packet::Connect(Box::new(c))).await;
        match self.recv().await {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes, publishes to the same topic at QoS 1 and expects the message back.
    pub(crate) async fn round_trip(&mut self, topic: &str) {
        self.send(&subscribe_packet(1, topic, QoS::AtLeastOnce))
            .await;
        assert!(matches!(self.recv().await, Some(Packet::SubAck(a)) if !a.reasons[0].is_error()));
        self.send(&publish_packet(
            topic,
            QoS::AtLeastOnce,
            2,
            b"over the wire",
        ))
        .await;
        let (mut acked, mut got) = (false, false);
        while !(acked && got) {
            match self.recv().await {
                Some(Packet::PubAck(a)) if a.packet_id == 2 => acked = true,
                Some(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"over the wire");
                    self.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                    got = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn tls_with_a_rustls_client() {
    let dir = TempDir::new("tls");
    let pki = Pki::new(&dir, "");
    let s = start(vec![pki.tls_listener("tls")]).await;
    for version in [V311, V5] {
        let tls = tls_connect(s.addr, client_config(&pki.ca_file, None))
            .await
            .unwrap();
        let mut c = StreamClient::new(tls, version);
        let ack = c.connect(connect_packet(version, "tls-client")).await;
        assert_eq!(ack.reason, ReasonCode::Success);
        c.round_trip("tls/test").await;
    }
    // A client that does not trust the server's CA fails the handshake.
    let other = Pki::new(&dir, "other-");
    assert!(
        tls_connect(s.addr, client_config(&other.ca_file, None))
            .await
            .is_err()
    );
    // Plain MQTT on the TLS port: at most a TLS alert, never a CONNACK, then the close.
    let mut raw = RawClient::open(s.addr).await;
    raw.send(&Packet::Connect(Box::new(connect_packet(V5, "plain"))))
        .await;
    let bytes = raw.expect_closed_raw(WAIT).await;
    assert!(bytes.first().is_none_or(|&b| b == 0x15), "{bytes:02X?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn tls_client_certificates_accepted_and_refused() {
    let dir = TempDir::new("mtls");
    let pki = Pki::new(&dir, "");
    let acl = dir.write("acl", "user device-7\ntopic readwrite devices/7/#\n");
    let mut l = pki.tls_listener("tls");
    l.ca_file = Some(pki.ca_file.clone());
    l.require_certificate = true;
    l.use_identity_as_username = Some(IdentityField::Cn);
    l.acl_file = Some(acl);
    let s = start(vec![l]).await;

    // A certificate from the CA: accepted, its CN is the username the ACL sees.
    let tls = tls_connect(
        s.addr,
        client_config(&pki.ca_file, Some(pki.client("device-7"))),
    )
    .await
    .unwrap();
    let mut c = StreamClient::new(tls, V5);
    let mut connect = connect_packet(V5, "dev7");
    connect.username = Some("someone-else".into());
    assert_eq!(c.connect(connect).await.reason, ReasonCode::Success);
    c.round_trip("devices/7/status").await;
    c.send(&publish_packet(
        "devices/8/status",
        QoS::AtLeastOnce,
        9,
        b"x",
    ))
    .await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::NotAuthorized)
    );

    // No certificate: the handshake fails (TLS 1.3 reports it on the first read).
    let refused = match tls_connect(s.addr, client_config(&pki.ca_file, None)).await {
        Err(_) => true,
        Ok(tls) => {
            let mut c = StreamClient::new(tls, V5);
            c.send(&Packet::Connect(Box::new(connect_packet(V5, "nocert"))))
                .await;
            c.recv().await.is_none()
        }
    };
    assert!(refused, "a client without a certificate was served");

    // A certificate from another CA: refused the same way.
    let rogue = Pki::new(&dir, "rogue-");
    let refused = match tls_connect(
        s.addr,
        client_config(&pki.ca_file, Some(rogue.client("device-7"))),
    )
    .await
    {
        Err(_) => true,
        Ok(tls) => {
            let mut c = StreamClient::new(tls, V5);
            c.send(&Packet::Connect(Box::new(connect_packet(V5, "rogue"))))
                .await;
            c.recv().await.is_none()
        }
    };
    assert!(refused, "a certificate from an unknown CA was accepted");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn tls_subject_as_username() {
    let dir = TempDir::new("mtls-subject");
    let pki = Pki::new(&dir, "");
    let acl = dir.write(
        "acl",
        // RFC 2253 lists the subject's attributes last to first: the certificate has
        // CN, then O.
        "user O=Starling tests,CN=sensor-1\ntopic readwrite sensors/1/#\n",
    );
    let mut l = pki.tls_listener("tls");
    l.ca_file = Some(pki.ca_file.clone());
    l.require_certificate = true;
    l.use_identity_as_username = Some(IdentityField::Subject);
    l.acl_file = Some(acl);
    let s = start(vec![l]).await;
    let tls = tls_connect(
        s.addr,
        client_config(&pki.ca_file, Some(pki.client("sensor-1"))),
    )
    .await
    .unwrap();
    let mut c = StreamClient::new(tls, V5);
    assert_eq!(
        c.connect(connect_packet(V5, "s1")).await.reason,
        ReasonCode::Success
    );
    c.round_trip("sensors/1/t").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn tls_certificates_reload_without_dropping_connections() {
    let dir = TempDir::new("tls-reload");
    let pki = Pki::new(&dir, "");
    let s = start(vec![pki.tls_listener("tls")]).await;
    let tls = tls_connect(s.addr, client_config(&pki.ca_file, None))
        .await
        .unwrap();
    let mut old = StreamClient::new(tls, V5);
    assert_eq!(
        old.connect(connect_packet(V5, "old")).await.reason,
        ReasonCode::Success
    );

    // New certificate from a new CA, written over the same files.
    let new = Pki::new(&dir, "new-");
    std::fs::copy(&new.cert_file, &pki.cert_file).unwrap();
    std::fs::copy(&new.key_file, &pki.key_file).unwrap();
    assert!(s.reload().is_empty());
    assert!(
        tls_connect(s.addr, client_config(&pki.ca_file, None))
            .await
            .is_err(),
        "still serving the old certificate"
    );
    let tls = tls_connect(s.addr, client_config(&new.ca_file, None))
        .await
        .unwrap();
    let mut fresh = StreamClient::new(tls, V5);
    assert_eq!(
        fresh.connect(connect_packet(V5, "new")).await.reason,
        ReasonCode::Success
    );
    // The connection made before the reload still works.
    old.round_trip("still/here").await;

    // A broken key file: the reload fails and the current certificate stays.
    std::fs::write(&pki.key_file, "not a key").unwrap();
    assert_eq!(s.reload().len(), 1);
    assert!(
        tls_connect(s.addr, client_config(&new.ca_file, None))
            .await
            .is_ok()
    );
    s.shutdown().await;
}
