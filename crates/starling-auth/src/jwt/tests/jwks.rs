//! Key sets (JWKS): each key pinned to its algorithm, and documents read key by key.

use super::*;

#[test]
fn jwks_keys_are_pinned_to_their_alg_or_an_unambiguous_one() {
    use Algorithm::*;
    let v = JwtVerifier::new(settings(
        &[RS256, PS256, ES256, ES384, EdDSA, HS512],
        Vec::new(),
    ))
    .unwrap();
    assert!(!v.has_keys());
    let update = v.set_jwks(&jwks(json!([
        rsa_jwk(RSA_PUB, "r1", Some("RS256")),
        rsa_jwk(RSA_PUB, "p1", Some("PS256")),
        // RS256 and PS256 are both allowed: an RSA key without alg is ambiguous.
        rsa_jwk(RSA_PUB, "r-noalg", None),
        ec_jwk(P256_PUB, "e1", "P-256"),
        ec_jwk(P384_PUB, "e2", "P-384"),
        ed_jwk("ed"),
        {"kty": "oct", "kid": "h1", "alg": "HS512", "k": URL_SAFE_NO_PAD.encode(SECRET)},
        // Not allowed, wrong type, for encryption, too short.
        rsa_jwk(RSA_PUB, "r5", Some("RS512")),
        {"kty": "RSA", "kid": "bad", "alg": "ES256", "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
        {"kty": "oct", "kid": "h2", "alg": "HS512", "k": URL_SAFE_NO_PAD.encode(&SECRET[..32])},
    ])));
    let kids: Vec<(&str, Algorithm)> = update
        .keys
        .iter()
        .map(|(k, a)| (k.as_deref().unwrap(), *a))
        .collect();
    assert_eq!(
        kids,
        [
            ("r1", RS256),
            ("p1", PS256),
            ("e1", ES256),
            ("e2", ES384),
            ("ed", EdDSA),
            ("h1", HS512)
        ]
    );
    let skipped: Vec<&str> = update
        .skipped
        .iter()
        .map(|s| s.kid.as_deref().unwrap())
        .collect();
    assert_eq!(skipped, ["r-noalg", "r5", "bad", "enc", "h2"]);
    assert!(
        update
            .skipped
            .iter()
            .any(|s| s.expected && s.kid.as_deref() == Some("enc"))
    );
    assert_eq!(v.jwks_len(), 6);

    for (alg, private, kid) in [
        (RS256, RSA_KEY, "r1"),
        (PS256, RSA_KEY, "p1"),
        (ES256, P256_KEY, "e1"),
        (ES384, P384_KEY, "e2"),
        (EdDSA, ED_KEY, "ed"),
        (HS512, SECRET, "h1"),
    ] {
        let t = sign(alg, private, Some(kid), &alice());
        assert!(v.verify(&t, "c").is_ok(), "{kid}");
        // Without a kid, every key of the algorithm is tried.
        let t = sign(alg, private, None, &alice());
        assert!(v.verify(&t, "c").is_ok(), "{kid} without kid");
    }
    // A kid the set does not have, or a key used with another algorithm.
    let t = sign(RS256, RSA_KEY, Some("r9"), &alice());
    assert_eq!(
        v.verify(&t, "c"),
        Err(JwtError::UnknownKey {
            kid: Some("r9".into()),
            alg: RS256
        })
    );
    let t = sign(PS256, RSA_KEY, Some("r1"), &alice());
    assert_eq!(
        v.verify(&t, "c").unwrap_err().reason(),
        JwtReason::UnknownKey
    );
    let t = sign(RS256, RSA2_KEY, Some("r1"), &alice());
    assert_eq!(v.verify(&t, "c"), Err(JwtError::BadSignature));
    // With only RS256 allowed, the RSA key without alg is RS256.
    let rs = JwtVerifier::new(settings(&[RS256], Vec::new())).unwrap();
    let update = rs.set_jwks(&jwks(json!([rsa_jwk(RSA_PUB, "r", None)])));
    assert_eq!(update.keys, [(Some("r".to_owned()), RS256)]);
}

#[test]
fn jwks_documents_are_read_key_by_key_and_never_emptied() {
    let v = JwtVerifier::new(settings(&[Algorithm::RS256], Vec::new())).unwrap();
    let doc = json!({"keys": [
        {"kty": "XYZ", "kid": "odd"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        rsa_jwk(RSA_PUB, "r1", Some("RS256")),
    ]});
    let update = v.load_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(update.keys.len(), 1);
    assert_eq!(update.skipped.len(), 2);
    assert_eq!(v.jwks_len(), 1);
    let t = sign(Algorithm::RS256, RSA_KEY, Some("r1"), &alice());
    assert!(v.verify(&t, "c").is_ok());
    // Refused whole, keeping the keys in use: nothing usable, too many keys, not JWKS.
    let none = json!({"keys": [{"kty": "XYZ"}]}).to_string();
    let many = json!({"keys": vec![rsa_jwk(RSA_PUB, "r", Some("RS256")); MAX_JWKS_KEYS + 1]});
    for bad in [
        none.as_str(),
        &many.to_string(),
        r#"{"keys": []}"#,
        r#"{"keys": 5}"#,
        "[]",
        "<html>",
    ] {
        assert!(
            matches!(v.load_jwks(bad.as_bytes()), Err(KeyError::Jwks(_))),
            "{bad:.40}"
        );
        assert!(v.verify(&t, "c").is_ok());
    }
    // set_jwks replaces as told.
    v.set_jwks(&JwkSet { keys: Vec::new() });
    assert_eq!(
        v.verify(&t, "c").unwrap_err().reason(),
        JwtReason::UnknownKey
    );
}
