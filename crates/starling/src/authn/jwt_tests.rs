//! The `jwt` backend: its configuration, and the JWKS fetched from a local HTTPS server
//! (a self-signed CA made here) at start, on unknown key ids, and after failures.

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    unix_now()
}

fn info<'a>(client_id: &'a str, password: &'a [u8]) -> ConnectInfo<'a> {
    ConnectInfo {
        client_id,
        username: None,
        password: Some(password),
        peer: None,
        listener: "test",
        certificate_identity: None,
        unix_uid: None,
    }
}

fn parse(toml_text: &str) -> anyhow::Result<JwtConfig> {
    Ok(toml::from_str(toml_text)?)
}

#[test]
fn the_configuration_parses_from_toml() {
    let c = parse(
        r#"
        token_from = "username"
        algorithms = ["RS256", "ES256", "EdDSA"]
        public_key_file = "/etc/starling/jwt.pem"
        jwks_url = "https://idp.example.com/.well-known/jwks.json"
        jwks_ca_file = "/etc/ssl/private-ca.pem"
        jwks_refresh_secs = 600
        jwks_min_refresh_secs = 30
        issuer = "https://idp.example.com/"
        audience = ["mqtt", "broker"]
        clock_skew_secs = 10
        username_claim = "preferred_username"
        client_id_claim = "client_id"
        acl_claim = "mqtt_acl"
        require_exp = false
        disconnect_on_expiry = false
        "#,
    )
    .unwrap();
    assert_eq!(c.token_from, TokenFrom::Username);
    assert_eq!(
        c.algorithms,
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
    );
    assert_eq!(
        c.public_key_file.as_deref(),
        Some(Path::new("/etc/starling/jwt.pem"))
    );
    assert_eq!(
        c.jwks_url.as_deref(),
        Some("https://idp.example.com/.well-known/jwks.json")
    );
    assert_eq!(c.jwks_refresh_secs, 600);
    assert_eq!(c.jwks_min_refresh_secs, 30);
    assert_eq!(c.issuer.as_deref(), Some("https://idp.example.com/"));
    assert_eq!(c.audience, Some(vec!["mqtt".into(), "broker".into()]));
    assert_eq!(c.clock_skew_secs, 10);
    assert_eq!(c.username_claim, "preferred_username");
    assert_eq!(c.client_id_claim.as_deref(), Some("client_id"));
    assert_eq!(c.acl_claim, "mqtt_acl");
    assert!(!c.require_exp && !c.disconnect_on_expiry);

    // The defaults, and one audience as a string.
    let c = parse("algorithms = [\"HS256\"]\nsecret = \"s\"\naudience = \"mqtt\"").unwrap();
    assert_eq!(
        c,
        JwtConfig {
            algorithms: vec![Algorithm::HS256],
            secret: Some("s".into()),
            audience: Some(vec!["mqtt".into()]),
            ..JwtConfig::default()
        }
    );
    assert_eq!(
        (
            c.jwks_refresh_secs,
            c.jwks_min_refresh_secs,
            c.clock_skew_secs
        ),
        (300, 10, 30)
    );
    assert_eq!(
        (c.username_claim.as_str(), c.acl_claim.as_str()),
        ("sub", "acl")
    );
    assert!(c.require_exp && c.disconnect_on_expiry && c.token_from == TokenFrom::Password);

    let e = parse("algorithms = [\"HS256\"]\nsecrets = \"s\"").unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
    let e = parse("algorithms = [\"none\"]").unwrap_err();
    assert!(e.to_string().contains("unknown variant"), "{e}");
    let e = parse("token_from = \"header\"").unwrap_err();
    assert!(e.to_string().contains("unknown variant"), "{e}");

    // The secret never shows in debug output, and the admin API redacts it by its name.
    assert!(!format!("{c:?}").contains("\"s\""));
    let v = serde_json::to_value(&c).unwrap();
    assert!(v.get("secret").is_some());
}

#[test]
fn validation_names_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ec = write(
        "ec.pem",
        &rcgen::KeyPair::generate().unwrap().public_key_pem(),
    );
    let secret = write("secret", &format!("{SECRET}\n"));
    let short = write("short", "tooshort\n");
    let base = "algorithms = [\"HS256\"]\n";
    let ok = [
        format!("{base}secret = \"{SECRET}\""),
        format!("{base}secret_file = \"{secret}\""),
        format!("algorithms = [\"ES256\"]\npublic_key_file = \"{ec}\""),
        "algorithms = [\"RS256\"]\njwks_url = \"https://idp.example/jwks\"".into(),
        "algorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:8080/jwks\"".into(),
        "algorithms = [\"RS256\"]\njwks_url = \"http://[::1]/jwks\"".into(),
        format!(
            "algorithms = [\"HS256\", \"ES256\"]\nsecret = \"{SECRET}\"\npublic_key_file = \"{ec}\""
        ),
    ];
    for text in ok {
        let c = parse(&text).unwrap();
        c.validate().unwrap_or_else(|e| panic!("{text}: {e:#}"));
        JwtBackend::build_at(&c, "auth.jwt", None).unwrap();
    }
    let bad = [
        ("secret = \"x\"".to_owned(), "auth.jwt.algorithms:"),
        (base.to_owned(), "auth.jwt: give"),
        (
            format!("{base}secret = \"{SECRET}\"\nsecret_file = \"{secret}\""),
            "auth.jwt.secret_file:",
        ),
        (format!("{base}secret = \"short\""), "auth.jwt.secret:"),
        (
            format!("{base}secret_file = \"{short}\""),
            "auth.jwt.secret_file:",
        ),
        (
            format!("{base}secret_file = \"/nonexistent/s\""),
            "auth.jwt.secret_file:",
        ),
        (
            format!("{base}jwks_url = \"http://idp.example/jwks\""),
            "auth.jwt.jwks_url:",
        ),
        (
            format!("{base}jwks_url = \"ftp://idp.example/jwks\""),
            "auth.jwt.jwks_url:",
        ),
        (
            format!("{base}jwks_url = \"not a url\""),
            "auth.jwt.jwks_url:",
        ),
        (
            format!("{base}secret = \"{SECRET}\"\njwks_ca_file = \"{secret}\""),
            "auth.jwt.jwks_ca_file:",
        ),
        (
            format!("{base}jwks_url = \"https://a/j\"\njwks_ca_file = \"/nonexistent\""),
            "auth.jwt.jwks_ca_file:",
        ),
        (
            format!("{base}jwks_url = \"https://a/j\"\njwks_refresh_secs = 1"),
            "auth.jwt.jwks_refresh_secs:",
        ),
        (
            format!("{base}jwks_url = \"https://a/j\"\njwks_min_refresh_secs = 0"),
            "auth.jwt.jwks_min_refresh_secs:",
        ),
        (
            format!(
                "{base}jwks_url = \"https://a/j\"\njwks_refresh_secs = 20\njwks_min_refresh_secs = 30"
            ),
            "auth.jwt.jwks_min_refresh_secs:",
        ),
        (
            format!("{base}secret = \"{SECRET}\"\nclock_skew_secs = 7200"),
            "auth.jwt.clock_skew_secs:",
        ),
        (
            "algorithms = [\"RS256\"]\npublic_key_file = \"/nonexistent.pem\"".into(),
            "auth.jwt.public_key_file:",
        ),
        (
            format!("algorithms = [\"RS256\"]\npublic_key_file = \"{ec}\""),
            "auth.jwt.public_key_file:",
        ),
        (
            format!("algorithms = [\"HS256\", \"RS256\"]\nsecret = \"{SECRET}\""),
            "auth.jwt.algorithms: RS256",
        ),
        (
            format!("{base}secret = \"{SECRET}\"\naudience = []"),
            "auth.jwt.audience:",
        ),
        (
            format!("{base}secret = \"{SECRET}\"\naudience = [\"\"]"),
            "auth.jwt.audience:",
        ),
        (
            format!("{base}secret = \"{SECRET}\"\nissuer = \"\""),
            "auth.jwt.issuer:",
        ),
        (
            format!("{base}secret = \"{SECRET}\"\nusername_claim = \"\""),
            "auth.jwt.username_claim:",
        ),
        (
            format!("{base}secret = \"{SECRET}\"\nclient_id_claim = \"\""),
            "auth.jwt.client_id_claim:",
        ),
    ];
    for (text, want) in bad {
        let e = parse(&text).unwrap().validate().unwrap_err();
        assert!(format!("{e:#}").starts_with(want), "{text}: {e:#}");
    }
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_secret_backend_passes_allows_denies_and_counts() {
    let cfg = parse(&format!(
        "algorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nclient_id_claim = \"cid\""
    ))
    .unwrap();
    let b = JwtBackend::build(&cfg, Arc::new(Stop::default())).unwrap();
    assert_eq!(b.kind(), "jwt");
    assert!(b.has_keys());
    // A password that is not a JWT is the next backend's.
    assert!(matches!(
        b.authenticate(&info("c", b"hunter2")),
        Answer::Now(Verdict::Pass)
    ));
    let good = hs256(&json!({
        "sub": "alice", "cid": "dev1", "exp": now() + 600,
        "acl": {"pub": ["devices/%c/up"]},
    }));
    match b.authenticate(&info("dev1", good.as_bytes())) {
        Answer::Now(Verdict::Allow(g)) => {
            assert_eq!(g.username.as_deref(), Some("alice"));
            assert!(g.acl.is_some());
            assert!(g.valid_for.is_some_and(|d| d <= Duration::from_secs(600)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.authenticate(&info("dev2", good.as_bytes())),
        Answer::Now(Verdict::Deny(starling_auth::DenyReason::NotAuthorized))
    ));
    let expired = hs256(&json!({"sub": "alice", "cid": "dev1", "exp": now() - 3600}));
    assert!(matches!(
        b.authenticate(&info("dev1", expired.as_bytes())),
        Answer::Now(Verdict::Deny(
            starling_auth::DenyReason::BadUserNameOrPassword
        ))
    ));
    let s = b.stats().snapshot();
    assert_eq!(s.verified, 1);
    assert_eq!(s.denied[JwtReason::ClientIdMismatch.index()], 1);
    assert_eq!(b.stats().denied(JwtReason::Expired), 1);
    assert_eq!(s.denied.iter().sum::<u64>(), 2);
    assert_eq!((s.jwks_fetches, s.jwks_keys), (0, 0));
    let by_reason = b.stats().denied_by_reason();
    assert_eq!(by_reason[0], (JwtReason::Expired, 1));
}

// --- A local HTTPS key server -------------------------------------------------------------

#[derive(Clone)]
struct Doc {
    status: u16,
    body: String,
    delay: Duration,
}

struct JwksServer {
    url: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
    doc: Arc<Mutex<Doc>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pki() -> (String, Vec<u8>, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Starling JWKS test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.der().to_vec(), key.serialize_der())
}

impl JwksServer {
    async fn start(doc: Doc) -> Self {
        let (ca_pem, cert, key) = pki();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (Arc::clone(&doc), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, doc, hits) = (acceptor.clone(), Arc::clone(&d), Arc::clone(&h));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let doc = doc.lock().unwrap().clone();
                    tokio::time::sleep(doc.delay).await;
                    let answer = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{}",
                        doc.status,
                        doc.body.len(),
                        doc.body
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            url: format!("https://{addr}/jwks.json"),
            ca_file,
            _dir: dir,
            doc,
            hits,
            task,
        }
    }

    fn serve(&self, status: u16, body: impl Into<String>) {
        let mut d = self.doc.lock().unwrap();
        d.status = status;
        d.body = body.into();
    }

    fn delay(&self, delay: Duration) {
        self.doc.lock().unwrap().delay = delay;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn config(&self) -> JwtConfig {
        JwtConfig {
            algorithms: vec![Algorithm::ES256],
            jwks_url: Some(self.url.clone()),
            jwks_ca_file: Some(self.ca_file.clone()),
            ..JwtConfig::default()
        }
    }
}

fn doc(status: u16, body: impl Into<String>) -> Doc {
    Doc {
        status,
        body: body.into(),
        delay: Duration::ZERO,
    }
}

/// An ES256 signing key and its JWK.
struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

fn signer(kid: &str) -> Signer {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pair = rcgen::KeyPair::generate().unwrap();
    let point = pair.public_key_raw();
    let (x, y) = point[1..].split_at(32);
    Signer {
        kid: kid.into(),
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}),
    }
}

impl Signer {
    fn token(&self, sub: &str) -> String {
        let header = Header {
            kid: Some(self.kid.clone()),
            ..Header::new(Algorithm::ES256)
        };
        jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now() + 600}), &self.key).unwrap()
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn allowed_as(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Allow(g) => g.username.as_deref(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_refresh_the_jwks_once_for_everyone() {
    let (k1, k2, k3) = (signer("k1"), signer("k2"), signer("k3"));
    let server = JwksServer::start(doc(200, jwks(&[&k1]))).await;
    let stop = Arc::new(Stop::default());
    let b = JwtBackend::build(&server.config(), Arc::clone(&stop)).unwrap();
    let stats = b.stats();
    until("the first fetch", || {
        stats.jwks_keys.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(server.hits(), 1);
    let t1 = k1.token("alice");
    match b.authenticate(&info("c", t1.as_bytes())) {
        Answer::Now(v) => assert_eq!(allowed_as(&v), Some("alice")),
        Answer::Later(_) => panic!("a known key answers at once"),
    }

    // The issuer rotates: k2 appears. Twenty clients with k2 tokens share one fetch.
    server.serve(200, jwks(&[&k1, &k2]));
    server.delay(Duration::from_millis(300));
    let t2 = k2.token("bob");
    let mut waiting = Vec::new();
    for i in 0..20 {
        let id = format!("c{i}");
        match b.authenticate(&info(&id, t2.as_bytes())) {
            Answer::Later(f) => waiting.push(tokio::spawn(f)),
            Answer::Now(v) => panic!("an unknown kid waits for the key server: {v:?}"),
        }
    }
    for w in waiting {
        assert_eq!(allowed_as(&w.await.unwrap()), Some("bob"));
    }
    assert_eq!(server.hits(), 2, "one fetch for all");
    assert_eq!(stats.jwks_keys.load(Ordering::SeqCst), 2);

    // Within jwks_min_refresh_secs another unknown kid is refused at once, without a fetch.
    let t3 = k3.token("mallory");
    match b.authenticate(&info("c", t3.as_bytes())) {
        Answer::Now(Verdict::Deny(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 2);
    // An algorithm not allowed never asks the key server.
    let hs = hs256(&json!({"sub": "x", "exp": now() + 60}));
    assert!(matches!(
        b.authenticate(&info("c", hs.as_bytes())),
        Answer::Now(Verdict::Deny(_))
    ));
    let s = stats.snapshot();
    assert_eq!(s.verified, 21);
    assert_eq!(s.denied[JwtReason::UnknownKey.index()], 2);
    assert_eq!((s.jwks_fetches, s.jwks_fetch_failures), (2, 0));

    // The task ends with the broker.
    stop.stop();
    let ks = b.jwks.as_ref().unwrap();
    until("the refresher to end", || Arc::strong_count(ks) == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_server_down_at_start_is_retried_and_clients_refused_meanwhile() {
    let k1 = signer("k1");
    let server = JwksServer::start(doc(503, "busy")).await;
    let stop = Arc::new(Stop::default());
    let b = JwtBackend::build(&server.config(), Arc::clone(&stop)).unwrap();
    let stats = b.stats();
    until("a failed fetch", || {
        stats.jwks_fetch_failures.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(!b.has_keys());
    // Refused: at once (a fetch just failed), or after waiting for the one under way.
    let t = k1.token("alice");
    let v = b.authenticate(&info("c", t.as_bytes())).resolve().await;
    assert!(matches!(v, Verdict::Deny(_)), "{v:?}");

    server.serve(200, jwks(&[&k1]));
    until("the retry", || stats.jwks_keys.load(Ordering::SeqCst) == 1).await;
    let v = b.authenticate(&info("c", t.as_bytes())).resolve().await;
    assert_eq!(allowed_as(&v), Some("alice"));
    let s = stats.snapshot();
    assert!(s.jwks_fetch_failures >= 1 && s.jwks_fetches > s.jwks_fetch_failures);
    stop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_documents_and_untrusted_servers_keep_the_keys_in_use() {
    let k1 = signer("k1");
    let server = JwksServer::start(doc(200, jwks(&[&k1]))).await;
    let stop = Arc::new(Stop::default());
    let b = JwtBackend::build(&server.config(), Arc::clone(&stop)).unwrap();
    let stats = b.stats();
    until("the first fetch", || {
        stats.jwks_keys.load(Ordering::SeqCst) == 1
    })
    .await;
    let ks = Arc::clone(b.jwks.as_ref().unwrap());
    for body in [
        "x".repeat(JWKS_MAX_BODY + 1),
        "<html>".into(),
        json!({"keys": []}).to_string(),
    ] {
        server.serve(200, body);
        let failures = stats.jwks_fetch_failures.load(Ordering::SeqCst);
        assert!(!ks.apply(ks.fetch().await));
        assert_eq!(
            stats.jwks_fetch_failures.load(Ordering::SeqCst),
            failures + 1
        );
    }
    let t = k1.token("alice");
    let v = b.authenticate(&info("c", t.as_bytes())).resolve().await;
    assert_eq!(allowed_as(&v), Some("alice"), "the keys in use stay");
    stop.stop();

    // A server whose certificate does not chain to the configured CA is never trusted.
    let other = JwksServer::start(doc(200, jwks(&[&k1]))).await;
    let mut cfg = server.config();
    cfg.jwks_url = Some(other.url.clone());
    let stop = Arc::new(Stop::default());
    let b = JwtBackend::build(&cfg, Arc::clone(&stop)).unwrap();
    let stats = b.stats();
    until("a failed fetch", || {
        stats.jwks_fetch_failures.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(other.hits(), 0);
    assert!(!b.has_keys());
    stop.stop();
}

#[test]
fn building_with_a_jwks_url_outside_a_runtime_is_an_error_not_a_panic() {
    let cfg = parse("algorithms = [\"RS256\"]\njwks_url = \"https://idp.example/jwks\"").unwrap();
    let e = JwtBackend::build(&cfg, Arc::new(Stop::default())).unwrap_err();
    assert!(e.to_string().contains("runtime"), "{e}");
    // Without a stop signal nothing is started, so no runtime is needed.
    let b = JwtBackend::build_at(&cfg, "auth.jwt", None).unwrap();
    assert!(!b.has_keys());
}
