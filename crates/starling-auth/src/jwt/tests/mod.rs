//! Tokens made with jsonwebtoken itself, signed by the test keys in tests/data/jwt. Key sets
//! (JWKS) are in `jwks.rs`.

mod jwks;

use super::*;
use crate::Client;
use crate::chain::Action;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

const RSA_KEY: &[u8] = include_bytes!("../../../tests/data/jwt/rsa.key");
const RSA_PUB: &[u8] = include_bytes!("../../../tests/data/jwt/rsa.pub");
const RSA_CRT: &[u8] = include_bytes!("../../../tests/data/jwt/rsa.crt");
const RSA_PKCS1_PUB: &[u8] = include_bytes!("../../../tests/data/jwt/rsa-pkcs1.pub");
const RSA2_KEY: &[u8] = include_bytes!("../../../tests/data/jwt/rsa2.key");
const RSA1024_PUB: &[u8] = include_bytes!("../../../tests/data/jwt/rsa1024.pub");
const P256_KEY: &[u8] = include_bytes!("../../../tests/data/jwt/p256.key");
const P256_PUB: &[u8] = include_bytes!("../../../tests/data/jwt/p256.pub");
const P384_KEY: &[u8] = include_bytes!("../../../tests/data/jwt/p384.key");
const P384_PUB: &[u8] = include_bytes!("../../../tests/data/jwt/p384.pub");
const ED_KEY: &[u8] = include_bytes!("../../../tests/data/jwt/ed25519.key");
const ED_PUB: &[u8] = include_bytes!("../../../tests/data/jwt/ed25519.pub");
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A fixed "now" for the tests that look at time.
const T: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn encoding_key(alg: Algorithm, private: &[u8]) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(private),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(private).unwrap(),
        _ => EncodingKey::from_rsa_pem(private).unwrap(),
    }
}

fn sign(alg: Algorithm, private: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, private)).unwrap()
}

/// A token for alice valid for an hour from the real clock.
fn alice() -> Value {
    json!({"sub": "alice", "exp": now() + 3600})
}

fn settings(algorithms: &[Algorithm], keys: Vec<JwtKey>) -> JwtSettings {
    JwtSettings {
        algorithms: algorithms.to_vec(),
        keys,
        ..JwtSettings::default()
    }
}

fn hs256() -> JwtVerifier {
    let keys = keys::keys_from_secret(SECRET, &[Algorithm::HS256]).unwrap();
    JwtVerifier::new(settings(&[Algorithm::HS256], keys)).unwrap()
}

fn with(tweak: impl FnOnce(&mut JwtSettings)) -> JwtVerifier {
    let keys = keys::keys_from_secret(SECRET, &[Algorithm::HS256]).unwrap();
    let mut s = settings(&[Algorithm::HS256], keys);
    tweak(&mut s);
    JwtVerifier::new(s).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, SECRET, None, claims)
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn info<'a>(client_id: &'a str, user: Option<&'a str>, pw: Option<&'a [u8]>) -> ConnectInfo<'a> {
    ConnectInfo {
        client_id,
        username: user,
        password: pw,
        peer: None,
        listener: "test",
        certificate_identity: None,
        unix_uid: None,
    }
}

#[test]
fn every_algorithm_family_verifies() {
    use Algorithm::*;
    let cases: [(Algorithm, &[u8], &[u8]); 12] = [
        (HS256, SECRET, SECRET),
        (HS384, SECRET, SECRET),
        (HS512, SECRET, SECRET),
        (RS256, RSA_KEY, RSA_PUB),
        (RS384, RSA_KEY, RSA_PUB),
        (RS512, RSA_KEY, RSA_PUB),
        (PS256, RSA_KEY, RSA_PUB),
        (PS384, RSA_KEY, RSA_PUB),
        (PS512, RSA_KEY, RSA_PUB),
        (ES256, P256_KEY, P256_PUB),
        (ES384, P384_KEY, P384_PUB),
        (EdDSA, ED_KEY, ED_PUB),
    ];
    for (alg, private, public) in cases {
        let keys = if matches!(alg, HS256 | HS384 | HS512) {
            keys::keys_from_secret(public, &[alg]).unwrap()
        } else {
            keys::keys_from_pem(public, &[alg]).unwrap()
        };
        let v = JwtVerifier::new(settings(&[alg], keys)).unwrap();
        let token = sign(alg, private, None, &alice());
        let g = v
            .verify(&token, "c")
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(g.username.as_deref(), Some("alice"), "{alg:?}");
        let left = g.valid_for.unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        assert!(g.acl.is_none());
    }
}

#[test]
fn a_certificate_or_a_pkcs1_key_gives_the_public_key() {
    for pem in [RSA_CRT, RSA_PKCS1_PUB] {
        let keys = keys::keys_from_pem(pem, &[Algorithm::RS256]).unwrap();
        let v = JwtVerifier::new(settings(&[Algorithm::RS256], keys)).unwrap();
        let token = sign(Algorithm::RS256, RSA_KEY, None, &alice());
        assert!(v.verify(&token, "c").is_ok());
    }
}

#[test]
fn a_pem_key_gets_every_allowed_algorithm_of_its_type() {
    use Algorithm::*;
    let keys = keys::keys_from_pem(RSA_PUB, &[RS256, PS256, ES256, HS256]).unwrap();
    let algs: Vec<Algorithm> = keys.iter().map(|k| k.alg).collect();
    assert_eq!(algs, [RS256, PS256]);
}

#[test]
fn keys_that_do_not_fit_the_algorithm_are_refused_at_load() {
    use Algorithm::*;
    for (pem, algs) in [
        (P256_PUB, &[ES384][..]),
        (P384_PUB, &[ES256][..]),
        (RSA_PUB, &[ES256, EdDSA][..]),
        (RSA_PUB, &[HS256][..]),
        (ED_PUB, &[RS256][..]),
        (P256_PUB, &[RS256, PS256][..]),
    ] {
        let e = keys::keys_from_pem(pem, algs).unwrap_err();
        assert!(matches!(e, KeyError::NoAlgorithm { .. }), "{e}");
    }
    let e = keys::keys_from_pem(RSA1024_PUB, &[RS256]).unwrap_err();
    assert!(e.to_string().contains("1024-bit"), "{e}");
    let e = keys::keys_from_pem(RSA_KEY, &[RS256]).unwrap_err();
    assert!(e.to_string().contains("private key"), "{e}");
    assert!(keys::keys_from_pem(b"not a pem", &[RS256]).is_err());
    // A secret is never an RSA key, and is long enough for its hash.
    assert!(matches!(
        JwtKey::hmac(RSA_PUB, RS256),
        Err(KeyError::AlgorithmMismatch { .. })
    ));
    assert!(keys::keys_from_secret(b"short", &[HS256]).is_err());
    assert!(keys::keys_from_secret(&SECRET[..40], &[HS256]).is_ok());
    assert!(keys::keys_from_secret(&SECRET[..40], &[HS256, HS384]).is_err());
    assert!(keys::keys_from_secret(SECRET, &[RS256]).is_err());
    // Settings that cannot work.
    assert!(JwtVerifier::new(settings(&[], Vec::new())).is_err());
    let keys = keys::keys_from_secret(SECRET, &[HS256]).unwrap();
    assert!(JwtVerifier::new(settings(&[HS384], keys)).is_err());
}

#[test]
fn a_wrong_key_is_a_bad_signature() {
    let keys = keys::keys_from_pem(RSA_PUB, &[Algorithm::RS256]).unwrap();
    let v = JwtVerifier::new(settings(&[Algorithm::RS256], keys)).unwrap();
    let token = sign(Algorithm::RS256, RSA2_KEY, None, &alice());
    assert_eq!(v.verify(&token, "c"), Err(JwtError::BadSignature));
    let other = sign(Algorithm::HS256, &SECRET[1..], None, &alice());
    assert_eq!(hs256().verify(&other, "c"), Err(JwtError::BadSignature));
    // A tampered payload: the signature no longer covers it.
    let good = hs(&alice());
    let [h, _, s] = parts(&good).unwrap();
    let forged = format!(
        "{h}.{}.{s}",
        URL_SAFE_NO_PAD.encode(json!({"sub": "root", "exp": now() + 60}).to_string())
    );
    let e = hs256().verify(&forged, "c").unwrap_err();
    assert_eq!(e.reason(), JwtReason::BadSignature);
    assert_eq!(e.deny_reason(), DenyReason::BadUserNameOrPassword);
}

#[test]
fn alg_none_is_never_accepted() {
    let v = hs256();
    for alg in ["none", "None", "NONE", ""] {
        let token = unsigned(&json!({"alg": alg, "typ": "JWT"}), &alice());
        let e = v.verify(&token, "c").unwrap_err();
        assert_eq!(e.reason(), JwtReason::Malformed, "{alg}");
        // It looks like a JWT, so it is refused rather than passed to the next backend.
        let pw = token.as_bytes();
        assert_eq!(
            v.authenticate(&info("c", None, Some(pw))).resolve_now(),
            Verdict::Deny(DenyReason::BadUserNameOrPassword)
        );
    }
    // An HS256 header with the signature stripped is a bad signature, not a bypass.
    let token = hs(&alice());
    let stripped = format!("{}.", token.rsplit_once('.').unwrap().0);
    assert_eq!(v.verify(&stripped, "c"), Err(JwtError::BadSignature));
}

#[test]
fn an_rsa_public_key_as_hmac_secret_is_refused() {
    // The classic confusion: the attacker signs HS256 with the server's RSA public key
    // bytes, hoping the server verifies with "its key" under the token's algorithm.
    let keys = keys::keys_from_pem(RSA_PUB, &[Algorithm::RS256]).unwrap();
    let token = sign(Algorithm::HS256, RSA_PUB, None, &alice());
    let only_rs = JwtVerifier::new(settings(&[Algorithm::RS256], keys.clone())).unwrap();
    assert_eq!(
        only_rs.verify(&token, "c").unwrap_err().reason(),
        JwtReason::UnknownKey
    );
    // Even with HS256 allowed, the RSA key is pinned to RS256 and no HS256 key exists.
    let both = JwtVerifier::new(settings(&[Algorithm::RS256, Algorithm::HS256], keys)).unwrap();
    assert_eq!(
        both.verify(&token, "c").unwrap_err().reason(),
        JwtReason::UnknownKey
    );
    // Naming the RSA key's kid from a key set does not help either.
    let v = JwtVerifier::new(settings(&[Algorithm::RS256, Algorithm::HS256], Vec::new())).unwrap();
    v.set_jwks(&jwks(json!([rsa_jwk(RSA_PUB, "r1", Some("RS256"))])));
    let token = sign(Algorithm::HS256, RSA_PUB, Some("r1"), &alice());
    assert_eq!(
        v.verify(&token, "c").unwrap_err().reason(),
        JwtReason::UnknownKey
    );
    let n = URL_SAFE_NO_PAD
        .decode(rsa_jwk(RSA_PUB, "r1", None)["n"].as_str().unwrap())
        .unwrap();
    let token = sign(Algorithm::HS256, &n, Some("r1"), &alice());
    assert_eq!(
        v.verify(&token, "c").unwrap_err().reason(),
        JwtReason::UnknownKey
    );
}

#[test]
fn expiry_and_not_before_allow_the_clock_skew() {
    let v = hs256();
    let token = hs(&json!({"sub": "a", "exp": T}));
    let g = v.verify_at(&token, "c", at(T - 100)).unwrap();
    assert_eq!(g.valid_for, Some(Duration::from_secs(100)));
    // Past exp but within the 30 s skew: accepted, for what is left of the skew.
    let g = v.verify_at(&token, "c", at(T + 10)).unwrap();
    assert_eq!(g.valid_for, Some(Duration::from_secs(20)));
    assert_eq!(
        v.verify_at(&token, "c", at(T + 30)),
        Err(JwtError::Expired { ago_secs: 30 })
    );
    assert_eq!(
        v.verify_at(&token, "c", at(T + 3600)).unwrap_err().reason(),
        JwtReason::Expired
    );
    let token = hs(&json!({"sub": "a", "exp": T + 1000, "nbf": T + 100}));
    assert_eq!(
        v.verify_at(&token, "c", at(T)),
        Err(JwtError::NotYetValid { in_secs: 100 })
    );
    assert!(v.verify_at(&token, "c", at(T + 70)).is_ok());
    // Fractional NumericDates are dates too (RFC 7519 §2).
    let token = hs(&json!({"sub": "a", "exp": T as f64 + 0.5}));
    assert!(v.verify_at(&token, "c", at(T)).is_ok());
    let token = hs(&json!({"sub": "a", "exp": "tomorrow"}));
    assert_eq!(
        v.verify_at(&token, "c", at(T)).unwrap_err().reason(),
        JwtReason::BadClaims
    );
    // A zero skew is exact.
    let strict = with(|s| s.clock_skew = Duration::ZERO);
    let token = hs(&json!({"sub": "a", "exp": T}));
    assert!(strict.verify_at(&token, "c", at(T)).is_err());
    assert!(strict.verify_at(&token, "c", at(T - 1)).is_ok());
}

#[test]
fn exp_is_required_unless_told_otherwise() {
    let token = hs(&json!({"sub": "a"}));
    assert_eq!(
        hs256().verify(&token, "c").unwrap_err().reason(),
        JwtReason::BadClaims
    );
    let lax = with(|s| s.require_exp = false);
    assert_eq!(lax.verify(&token, "c").unwrap().valid_for, None);
    let keep = with(|s| s.disconnect_on_expiry = false);
    assert_eq!(keep.verify(&hs(&alice()), "c").unwrap().valid_for, None);
    // An expiry centuries away is capped rather than overflowing anyone's clock.
    let far = hs(&json!({"sub": "a", "exp": 1e15}));
    assert_eq!(
        hs256().verify(&far, "c").unwrap().valid_for,
        Some(MAX_VALID_FOR)
    );
}

#[test]
fn issuer_must_match() {
    let v = with(|s| s.issuer = Some("https://idp.example".into()));
    let ok = hs(&json!({"sub": "a", "exp": now() + 60, "iss": "https://idp.example"}));
    assert!(v.verify(&ok, "c").is_ok());
    let wrong = hs(&json!({"sub": "a", "exp": now() + 60, "iss": "https://evil.example"}));
    assert_eq!(
        v.verify(&wrong, "c"),
        Err(JwtError::WrongIssuer(Some("https://evil.example".into())))
    );
    assert_eq!(
        v.verify(&hs(&alice()), "c"),
        Err(JwtError::WrongIssuer(None))
    );
    // Without an issuer configured, any issuer is fine.
    assert!(hs256().verify(&wrong, "c").is_ok());
}

#[test]
fn audience_must_name_this_broker() {
    let v = with(|s| s.audience = Some(vec!["mqtt".into(), "broker".into()]));
    let tok = |aud: Value| hs(&json!({"sub": "a", "exp": now() + 60, "aud": aud}));
    assert!(v.verify(&tok(json!("mqtt")), "c").is_ok());
    assert!(v.verify(&tok(json!(["api", "broker"])), "c").is_ok());
    for bad in [json!("api"), json!([]), json!(["api", "web"])] {
        assert_eq!(
            v.verify(&tok(bad.clone()), "c").unwrap_err().reason(),
            JwtReason::WrongAudience,
            "{bad}"
        );
    }
    assert_eq!(
        v.verify(&tok(json!(5)), "c").unwrap_err().reason(),
        JwtReason::BadClaims
    );
    assert_eq!(
        v.verify(&hs(&alice()), "c").unwrap_err().reason(),
        JwtReason::WrongAudience
    );
    // A token meant for some audience is not for a broker that has none (RFC 7519 §4.1.3).
    assert_eq!(
        hs256()
            .verify(&tok(json!("mqtt")), "c")
            .unwrap_err()
            .reason(),
        JwtReason::WrongAudience
    );
}

#[test]
fn the_username_comes_from_the_configured_claim() {
    let v = with(|s| s.username_claim = "preferred_username".into());
    let t = hs(&json!({"sub": "u-123", "preferred_username": "bob", "exp": now() + 60}));
    assert_eq!(v.verify(&t, "c").unwrap().username.as_deref(), Some("bob"));
    for bad in [
        json!({"exp": now() + 60, "sub": "x"}),
        json!({"exp": now() + 60, "preferred_username": ""}),
        json!({"exp": now() + 60, "preferred_username": 7}),
        json!({"exp": now() + 60, "preferred_username": "a\u{0}b"}),
    ] {
        assert_eq!(
            v.verify(&hs(&bad), "c").unwrap_err().reason(),
            JwtReason::BadClaims,
            "{bad}"
        );
    }
}

#[test]
fn the_client_id_claim_binds_the_token_to_a_client() {
    let v = with(|s| s.client_id_claim = Some("cid".into()));
    let t = hs(&json!({"sub": "a", "cid": "dev1", "exp": now() + 60}));
    assert!(v.verify(&t, "dev1").is_ok());
    let e = v.verify(&t, "dev2").unwrap_err();
    assert_eq!(e.reason(), JwtReason::ClientIdMismatch);
    assert_eq!(e.deny_reason(), DenyReason::NotAuthorized);
    let e = v.verify(&hs(&alice()), "dev1").unwrap_err();
    assert_eq!(e.reason(), JwtReason::ClientIdMismatch);
    let t = hs(&json!({"sub": "a", "cid": ["dev1"], "exp": now() + 60}));
    assert_eq!(
        v.verify(&t, "dev1").unwrap_err().reason(),
        JwtReason::BadClaims
    );
    // Without the setting the claim means nothing.
    let t = hs(&json!({"sub": "a", "cid": "dev1", "exp": now() + 60}));
    assert!(hs256().verify(&t, "dev2").is_ok());
}

fn client<'a>(id: &'a str, user: &'a str) -> Client<'a> {
    Client {
        client_id: id,
        username: Some(user),
    }
}

#[test]
fn the_acl_claim_becomes_the_clients_rules() {
    let v = hs256();
    let t = hs(&json!({
        "sub": "alice",
        "exp": now() + 60,
        "acl": {"pub": ["devices/%c/up"], "sub": ["devices/%c/down", "users/%u/#"]},
    }));
    let acl = v.verify(&t, "dev1").unwrap().acl.unwrap();
    let me = client("dev1", "alice");
    assert!(acl.allows(&me, Action::Publish, "devices/dev1/up"));
    assert!(!acl.allows(&client("dev2", "alice"), Action::Publish, "devices/dev1/up"));
    assert!(!acl.allows(&me, Action::Publish, "devices/dev1/down"));
    assert!(acl.allows(&me, Action::Subscribe, "devices/dev1/down"));
    assert!(acl.allows(&me, Action::Read, "users/alice/inbox"));
    assert!(!acl.allows(&me, Action::Read, "users/bob/inbox"));
    assert!(!acl.allows(&me, Action::Subscribe, "#"));

    // The long names, and a single topic for a list.
    let t = hs(&json!({
        "sub": "alice", "exp": now() + 60,
        "acl": {"publish": "a/%c", "subscribe": ["b/#"], "all": ["c"]},
    }));
    let acl = v.verify(&t, "x").unwrap().acl.unwrap();
    let me = client("x", "alice");
    assert!(acl.allows(&me, Action::Publish, "a/x"));
    assert!(acl.allows(&me, Action::Read, "b/y"));
    assert!(acl.allows(&me, Action::Publish, "c") && acl.allows(&me, Action::Read, "c"));

    // EMQX's list, its placeholders, and deny winning.
    let t = hs(&json!({
        "sub": "alice", "exp": now() + 60,
        "acl": [
            {"permission": "allow", "action": "all", "topic": "t/${clientid}/#"},
            {"permission": "deny", "action": "publish", "topic": "t/${clientid}/locked"},
            {"permission": "allow", "action": "subscribe", "topic": "u/${username}"},
        ],
    }));
    let acl = v.verify(&t, "x").unwrap().acl.unwrap();
    assert!(acl.allows(&me, Action::Publish, "t/x/a"));
    assert!(!acl.allows(&me, Action::Publish, "t/x/locked"));
    assert!(acl.allows(&me, Action::Subscribe, "u/alice"));
    assert!(!acl.allows(&me, Action::Publish, "u/alice"));

    // Conditions the broker cannot check: an allow is left out, a deny applies anyway.
    let t = hs(&json!({
        "sub": "alice", "exp": now() + 60,
        "acl": [
            "plain/%c",
            {"topics": ["q/#"]},
            {"permission": "allow", "action": "publish", "topic": "qos0/only", "qos": [0]},
            {"permission": "deny", "action": "publish", "topic": "q/secret", "retain": true},
        ],
    }));
    let acl = v.verify(&t, "x").unwrap().acl.unwrap();
    assert!(
        acl.allows(&me, Action::Publish, "plain/x") && acl.allows(&me, Action::Read, "plain/x")
    );
    assert!(acl.allows(&me, Action::Publish, "q/a"));
    assert!(!acl.allows(&me, Action::Publish, "qos0/only"));
    assert!(!acl.allows(&me, Action::Read, "q/secret"));

    // A claim under another name, and none at all.
    let other = with(|s| s.acl_claim = Some("mqtt_acl".into()));
    let t = hs(&json!({"sub": "a", "exp": now() + 60, "mqtt_acl": {"pub": ["x"]}}));
    assert!(other.verify(&t, "c").unwrap().acl.is_some());
    let off = with(|s| s.acl_claim = None);
    let t = hs(&json!({"sub": "a", "exp": now() + 60, "acl": 5}));
    assert!(off.verify(&t, "c").unwrap().acl.is_none());
}

#[test]
fn a_malformed_acl_claim_refuses_the_token() {
    let v = hs256();
    for acl in [
        json!(5),
        json!("devices/#"),
        json!({"pub": 5}),
        json!({"pub": [1]}),
        json!({"write": ["a"]}),
        json!({"pub": ["a/#/b"]}),
        json!({"pub": ["dev-%c"]}),
        json!({"pub": ["eq a/#"]}),
        json!([{"permission": "allow", "action": "publish"}]),
        json!([{"permission": "maybe", "action": "publish", "topic": "a"}]),
        json!([{"permission": "allow", "action": "read", "topic": "a"}]),
        json!([{"topics": "a"}]),
        json!([5]),
        json!({"pub": vec!["a"; MAX_ACL_RULES + 1]}),
    ] {
        let t = hs(&json!({"sub": "a", "exp": now() + 60, "acl": acl}));
        assert_eq!(
            v.verify(&t, "c").unwrap_err().reason(),
            JwtReason::BadClaims,
            "{acl}"
        );
    }
}

#[test]
fn what_is_not_a_jwt_passes_to_the_next_backend() {
    let v = hs256();
    for pw in [
        &b"hunter2"[..],
        b"a.b.c",
        b"x.y",
        b"",
        b"\xff\xfe.\x00",
        b"eyJhbGciOiJIUzI1NiJ9.e30.sig.extra",
        b"eyJhbGciOiJIUzI1NiJ9..sig",
        b"eyJhbGciOiJIUzI1NiJ9.e30/.sig",
    ] {
        assert!(v.check(&info("c", Some("u"), Some(pw))).is_none(), "{pw:?}");
        assert_eq!(
            v.authenticate(&info("c", None, Some(pw))).resolve_now(),
            Verdict::Pass
        );
    }
    assert!(v.check(&info("c", Some("u"), None)).is_none());
    assert_eq!(
        v.verify("hunter2", "c").unwrap_err().reason(),
        JwtReason::Malformed
    );
    // A JWT in the password is this backend's; the User Name is ignored.
    let t = hs(&alice());
    match v
        .authenticate(&info("c", Some("mallory"), Some(t.as_bytes())))
        .resolve_now()
    {
        Verdict::Allow(g) => assert_eq!(g.username.as_deref(), Some("alice")),
        other => panic!("{other:?}"),
    }
    // From the User Name when configured so; then the password does not count.
    let u = with(|s| s.token_source = TokenSource::Username);
    assert!(matches!(u.check(&info("c", Some(&t), None)), Some(Ok(_))));
    assert!(
        u.check(&info("c", Some("bob"), Some(t.as_bytes())))
            .is_none()
    );
    // A bad token is refused with bad credentials.
    let expired = hs(&json!({"sub": "a", "exp": 1}));
    assert_eq!(
        v.authenticate(&info("c", None, Some(expired.as_bytes())))
            .resolve_now(),
        Verdict::Deny(DenyReason::BadUserNameOrPassword)
    );
}

#[test]
fn a_crit_header_or_a_broken_token_is_malformed() {
    let v = hs256();
    let header = json!({"alg": "HS256", "crit": ["b64"], "b64": false});
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &alice(),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let [_, p, s] = parts(&t).unwrap();
    let crit = format!("{}.{p}.{s}", URL_SAFE_NO_PAD.encode(header.to_string()));
    assert_eq!(
        v.verify(&crit, "c").unwrap_err().reason(),
        JwtReason::Malformed
    );
    for bad_header in [
        json!({"alg": "HS999"}),
        json!({"typ": "JWT"}),
        json!({"alg": "HS256", "kid": 5}),
    ] {
        let t = format!("{}.{p}.{s}", URL_SAFE_NO_PAD.encode(bad_header.to_string()));
        assert_eq!(
            v.verify(&t, "c").unwrap_err().reason(),
            JwtReason::Malformed,
            "{bad_header}"
        );
    }
    let [h, _, _] = parts(&t).unwrap();
    let array_payload = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode("[1]"));
    assert_eq!(
        v.verify(&array_payload, "c").unwrap_err().reason(),
        JwtReason::BadSignature
    );
    // Signed, but the payload is not an object.
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!([1, 2]),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(
        v.verify(&t, "c").unwrap_err().reason(),
        JwtReason::Malformed
    );
}

#[test]
fn reasons_are_indexed_densely() {
    for (i, r) in JwtReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
    let names: std::collections::HashSet<&str> =
        JwtReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), JwtReason::COUNT);
}

#[test]
fn long_values_from_a_token_are_clipped_in_errors() {
    let v = with(|s| s.issuer = Some("me".into()));
    let t = hs(&json!({"sub": "a", "exp": now() + 60, "iss": "é".repeat(1000)}));
    let msg = v.verify(&t, "c").unwrap_err().to_string();
    assert!(msg.len() < 200, "{msg}");
}

// --- JWKS helpers (the JWKS tests are in `jwks.rs`) ------------------------------------------

fn jwks(keys: Value) -> JwkSet {
    serde_json::from_value(json!({ "keys": keys })).unwrap()
}

fn spki(pem: &[u8]) -> Vec<u8> {
    let block = x509_parser::pem::parse_x509_pem(pem).unwrap().1;
    block.contents
}

fn rsa_jwk(pem: &[u8], kid: &str, alg: Option<&str>) -> Value {
    let der = spki(pem);
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der).unwrap();
    let PublicKey::RSA(rsa) = spki.parsed().unwrap() else {
        panic!("not RSA")
    };
    let strip = |b: &[u8]| {
        b.iter()
            .skip_while(|x| **x == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    let mut k = json!({
        "kty": "RSA", "kid": kid, "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(strip(rsa.modulus)),
        "e": URL_SAFE_NO_PAD.encode(strip(rsa.exponent)),
    });
    if let Some(alg) = alg {
        k["alg"] = json!(alg);
    }
    k
}

fn ec_jwk(pem: &[u8], kid: &str, crv: &str) -> Value {
    let der = spki(pem);
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der).unwrap();
    let point = &spki.subject_public_key.data[1..];
    let (x, y) = point.split_at(point.len() / 2);
    json!({"kty": "EC", "kid": kid, "crv": crv,
           "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)})
}

fn ed_jwk(kid: &str) -> Value {
    let der = spki(ED_PUB);
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der).unwrap();
    json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
           "x": URL_SAFE_NO_PAD.encode(&spki.subject_public_key.data)})
}

trait ResolveNow<T> {
    fn resolve_now(self) -> T;
}

impl<T: std::fmt::Debug> ResolveNow<T> for Answer<T> {
    fn resolve_now(self) -> T {
        match self {
            Answer::Now(t) => t,
            Answer::Later(_) => panic!("the verifier answers at once"),
        }
    }
}
