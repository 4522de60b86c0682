//! The keys tokens are verified with: an HMAC secret, a public key from a PEM file, or the
//! keys of a JWKS document (RFC 7517). Each [`JwtKey`] is pinned to one algorithm, chosen when
//! the key is loaded and checked against the key's type, so that a token can never pick how
//! its signature is checked (RFC 8725 §3.1: an RSA public key used as an HMAC secret, say).

use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations};
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Keys a JWKS document may hold at most: a key server answers with a handful; a document
/// with more is refused whole, since each token without a `kid` may be tried against every
/// key of its algorithm.
pub const MAX_JWKS_KEYS: usize = 100;

/// RSA moduli ring verifies (its `RSA_PKCS1_2048_8192_*` and `RSA_PSS_2048_8192_*`): a key
/// outside this range could never verify anything, so it is refused when loaded.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// base64url as JWKs use it: without padding, though some servers pad.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A key that cannot be used, or a key source that gives none.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The algorithm does not fit the key (an RSA key for ES256, a secret for RS256).
    #[error("{alg:?} cannot be used with {key}")]
    AlgorithmMismatch {
        /// The algorithm asked for.
        alg: Algorithm,
        /// What the key is.
        key: String,
    },
    /// None of the allowed algorithms fits the key.
    #[error("none of the allowed algorithms ({allowed}) can be used with {key}")]
    NoAlgorithm {
        /// The allowed algorithms.
        allowed: String,
        /// What the key is.
        key: String,
    },
    /// The key is too weak or of an unsupported kind.
    #[error("{0}")]
    Unsupported(String),
    /// The key's encoding is broken.
    #[error("{0}")]
    Invalid(String),
    /// A JWKS document that is not `{"keys": [...]}`, has too many keys, or none usable.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// Settings that cannot work (no algorithm allowed, a key for an algorithm not allowed).
    #[error("{0}")]
    Settings(String),
}

/// One verification key, pinned to one algorithm.
#[derive(Clone)]
pub struct JwtKey {
    /// The key id tokens name in their `kid` header; `None`: any token of the key's
    /// algorithm may be tried against it.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    /// The key itself.
    pub key: DecodingKey,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key material stays out of logs (an HMAC key is a secret).
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// What kind of key material a key is, which decides the algorithms it can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Self::Hmac, HS256 | HS384 | HS512)
                | (Self::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Self::P256, ES256)
                | (Self::P384, ES384)
                | (Self::Ed25519, EdDSA)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Hmac => "an HMAC secret",
            Self::Rsa => "an RSA key",
            Self::P256 => "a P-256 EC key",
            Self::P384 => "a P-384 EC key",
            Self::Ed25519 => "an Ed25519 key",
        }
    }
}

fn list(algs: &[Algorithm]) -> String {
    let names: Vec<String> = algs.iter().map(|a| format!("{a:?}")).collect();
    names.join(", ")
}

/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
fn hmac_min_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

impl JwtKey {
    /// An HMAC key for `alg` (HS256, HS384 or HS512). The secret must be at least as long as
    /// the hash (32, 48 or 64 bytes; RFC 7518 §3.2): a shorter one can be guessed offline
    /// from any token signed with it.
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Result<Self, KeyError> {
        if !KeyKind::Hmac.fits(alg) {
            return Err(KeyError::AlgorithmMismatch {
                alg,
                key: KeyKind::Hmac.describe().into(),
            });
        }
        let min = hmac_min_len(alg);
        if secret.len() < min {
            return Err(KeyError::Unsupported(format!(
                "the secret for {alg:?} has {} bytes; it needs at least {min}",
                secret.len()
            )));
        }
        Ok(Self {
            kid: None,
            alg,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// The same key under key id `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key of a JWK, for its `alg`, or where it has none, for the one algorithm of
    /// `allowed` its type fits. Keys for encryption (`use: enc`, `key_ops` without
    /// `verify`, RSA-OAEP), algorithms outside `allowed`, and keys too weak to use are
    /// refused.
    pub fn from_jwk(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Self, KeyError> {
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(PublicKeyUse::Encryption) => {
                return Err(KeyError::Unsupported("an encryption key (use: enc)".into()));
            }
            Some(PublicKeyUse::Other(u)) => {
                return Err(KeyError::Unsupported(format!("unknown use {u:?}")));
            }
        }
        if let Some(ops) = &jwk.common.key_operations
            && !ops.contains(&KeyOperations::Verify)
        {
            return Err(KeyError::Unsupported(
                "key_ops does not include verify".into(),
            ));
        }
        let (kind, key) = jwk_material(&jwk.algorithm)?;
        let alg = match jwk.common.key_algorithm {
            Some(ka) => {
                let alg = signing_algorithm(ka)?;
                if !kind.fits(alg) {
                    return Err(KeyError::AlgorithmMismatch {
                        alg,
                        key: kind.describe().into(),
                    });
                }
                if !allowed.contains(&alg) {
                    return Err(KeyError::Unsupported(format!(
                        "alg {alg:?} is not among the allowed algorithms ({})",
                        list(allowed)
                    )));
                }
                alg
            }
            None => {
                // No `alg`: the key's type must leave one allowed algorithm; an RSA key with
                // both RS256 and PS256 allowed is ambiguous, and guessing would let a token
                // choose.
                let fitting: Vec<Algorithm> =
                    allowed.iter().copied().filter(|a| kind.fits(*a)).collect();
                match fitting.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(KeyError::NoAlgorithm {
                            allowed: list(allowed),
                            key: kind.describe().into(),
                        });
                    }
                    several => {
                        return Err(KeyError::Unsupported(format!(
                            "no alg, and several allowed algorithms fit {} ({}); the key \
                             server must name it",
                            kind.describe(),
                            list(several)
                        )));
                    }
                }
            }
        };
        if kind == KeyKind::Hmac
            && let Some(len) = hmac_len(&jwk.algorithm)
            && len < hmac_min_len(alg)
        {
            return Err(KeyError::Unsupported(format!(
                "the {alg:?} secret has {len} bytes; it needs at least {}",
                hmac_min_len(alg)
            )));
        }
        Ok(Self {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        })
    }
}

fn hmac_len(params: &AlgorithmParameters) -> Option<usize> {
    match params {
        AlgorithmParameters::OctetKey(p) => B64URL.decode(&p.value).ok().map(|v| v.len()),
        _ => None,
    }
}

/// A JWK `alg` as a signature algorithm; encryption algorithms are refused.
fn signing_algorithm(ka: KeyAlgorithm) -> Result<Algorithm, KeyError> {
    Ok(match ka {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => {
            return Err(KeyError::Unsupported(format!(
                "an encryption key (alg {ka})"
            )));
        }
    })
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>, KeyError> {
    B64URL
        .decode(value)
        .map_err(|e| KeyError::Invalid(format!("{field} is not base64url: {e}")))
}

/// The decoded key material of a JWK and its kind.
fn jwk_material(params: &AlgorithmParameters) -> Result<(KeyKind, DecodingKey), KeyError> {
    match params {
        AlgorithmParameters::RSA(p) => {
            let n = b64("n", &p.n)?;
            let e = b64("e", &p.e)?;
            check_rsa_bits(&n)?;
            Ok((KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e)))
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, len) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                ref other => {
                    return Err(KeyError::Unsupported(format!("EC curve {other:?}")));
                }
            };
            let x = b64("x", &p.x)?;
            let y = b64("y", &p.y)?;
            if x.len() != len || y.len() != len {
                return Err(KeyError::Invalid(format!(
                    "EC coordinates of {} and {} bytes for a {len}-byte curve",
                    x.len(),
                    y.len()
                )));
            }
            // ring takes the uncompressed point: 0x04 || x || y.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok((kind, DecodingKey::from_ec_der(&point)))
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(KeyError::Unsupported(format!("OKP curve {:?}", p.curve)));
            }
            let x = b64("x", &p.x)?;
            if x.len() != 32 {
                return Err(KeyError::Invalid(format!(
                    "an Ed25519 key of {} bytes",
                    x.len()
                )));
            }
            Ok((KeyKind::Ed25519, DecodingKey::from_ed_der(&x)))
        }
        AlgorithmParameters::OctetKey(p) => {
            let k = b64("k", &p.value)?;
            if k.is_empty() {
                return Err(KeyError::Invalid("an empty secret".into()));
            }
            Ok((KeyKind::Hmac, DecodingKey::from_secret(&k)))
        }
    }
}

/// Bits of a big-endian unsigned integer, leading zero bytes (DER's sign byte) ignored.
fn bit_len(n: &[u8]) -> usize {
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => n.get(i..).unwrap_or_default(),
        None => return 0,
    };
    match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

fn check_rsa_bits(modulus: &[u8]) -> Result<(), KeyError> {
    let bits = bit_len(modulus);
    if RSA_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::Unsupported(format!(
            "a {bits}-bit RSA key (2048 to 8192 bits are supported)"
        )))
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// The kind and verification key of a SubjectPublicKeyInfo.
fn spki_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(KeyKind, DecodingKey), KeyError> {
    let data: &[u8] = &spki.subject_public_key.data;
    match spki.algorithm.algorithm.to_id_string().as_str() {
        OID_RSA => {
            let (_, rsa) = RSAPublicKey::from_der(data)
                .map_err(|e| KeyError::Invalid(format!("invalid RSA public key: {e}")))?;
            check_rsa_bits(rsa.modulus)?;
            // ring takes the PKCS#1 RSAPublicKey the SPKI wraps.
            Ok((KeyKind::Rsa, DecodingKey::from_rsa_der(data)))
        }
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            let (kind, len) = match curve.as_deref() {
                Some(OID_P256) => (KeyKind::P256, 65),
                Some(OID_P384) => (KeyKind::P384, 97),
                Some(other) => {
                    return Err(KeyError::Unsupported(format!(
                        "EC curve {other} (P-256 and P-384 are supported)"
                    )));
                }
                None => return Err(KeyError::Invalid("an EC key without its curve".into())),
            };
            if data.len() != len || data.first() != Some(&4) {
                return Err(KeyError::Unsupported(
                    "a compressed or malformed EC point (an uncompressed point is needed)".into(),
                ));
            }
            Ok((kind, DecodingKey::from_ec_der(data)))
        }
        OID_ED25519 => {
            if data.len() != 32 {
                return Err(KeyError::Invalid(format!(
                    "an Ed25519 key of {} bytes",
                    data.len()
                )));
            }
            Ok((KeyKind::Ed25519, DecodingKey::from_ed_der(data)))
        }
        other => Err(KeyError::Unsupported(format!(
            "a public key of type {other} (RSA, EC P-256/P-384 and Ed25519 are supported)"
        ))),
    }
}

/// The verification key of the first public key (`PUBLIC KEY`, `RSA PUBLIC KEY`) or
/// certificate (`CERTIFICATE`, its subject's key) in `pem`.
fn pem_key(pem: &[u8]) -> Result<(KeyKind, DecodingKey), KeyError> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| KeyError::Invalid(format!("invalid PEM: {e}")))?;
        match block.label.as_str() {
            "PUBLIC KEY" => {
                let (_, spki) = SubjectPublicKeyInfo::from_der(&block.contents)
                    .map_err(|e| KeyError::Invalid(format!("invalid public key: {e}")))?;
                return spki_key(&spki);
            }
            "RSA PUBLIC KEY" => {
                let (_, rsa) = RSAPublicKey::from_der(&block.contents)
                    .map_err(|e| KeyError::Invalid(format!("invalid RSA public key: {e}")))?;
                check_rsa_bits(rsa.modulus)?;
                return Ok((KeyKind::Rsa, DecodingKey::from_rsa_der(&block.contents)));
            }
            "CERTIFICATE" => {
                let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
                    .map_err(|e| KeyError::Invalid(format!("invalid certificate: {e}")))?;
                return spki_key(cert.public_key());
            }
            label if label.contains("PRIVATE KEY") => {
                return Err(KeyError::Invalid(
                    "this is a private key; give the public key (openssl pkey -pubout)".into(),
                ));
            }
            _ => {}
        }
    }
    Err(KeyError::Invalid(
        "no PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE block".into(),
    ))
}

/// Keys for a PEM public key or certificate: one for each algorithm of `algorithms` the key's
/// type fits (RS256 and PS256 for an RSA key, say). An error when none fits: an EC key with
/// only RS256 allowed is a mistake to report at load, not a key that silently never works.
pub fn keys_from_pem(pem: &[u8], algorithms: &[Algorithm]) -> Result<Vec<JwtKey>, KeyError> {
    let (kind, key) = pem_key(pem)?;
    let keys: Vec<JwtKey> = algorithms
        .iter()
        .filter(|a| kind.fits(**a))
        .map(|alg| JwtKey {
            kid: None,
            alg: *alg,
            key: key.clone(),
        })
        .collect();
    if keys.is_empty() {
        return Err(KeyError::NoAlgorithm {
            allowed: list(algorithms),
            key: kind.describe().into(),
        });
    }
    Ok(keys)
}

/// Keys for an HMAC secret: one for each HMAC algorithm of `algorithms`; an error when there
/// is none, or the secret is too short for one of them.
pub fn keys_from_secret(secret: &[u8], algorithms: &[Algorithm]) -> Result<Vec<JwtKey>, KeyError> {
    let keys = algorithms
        .iter()
        .filter(|a| KeyKind::Hmac.fits(**a))
        .map(|alg| JwtKey::hmac(secret, *alg))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(KeyError::NoAlgorithm {
            allowed: list(algorithms),
            key: KeyKind::Hmac.describe().into(),
        });
    }
    Ok(keys)
}

/// A key of a JWKS document that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    /// Its `kid`, if it has one.
    pub kid: Option<String>,
    /// Why it was skipped.
    pub why: String,
    /// Skipping it is expected (an encryption key in a server's shared set): worth a debug
    /// line, not a warning.
    pub expected: bool,
}

/// The keys taken from a JWKS document.
#[derive(Clone, Debug, Default)]
pub struct JwksKeys {
    /// The usable keys, in the document's order.
    pub keys: Vec<JwtKey>,
    /// The keys left out.
    pub skipped: Vec<SkippedKey>,
}

/// The usable keys of `set`, each for its algorithm (see [`JwtKey::from_jwk`]).
pub fn keys_from_jwks(set: &JwkSet, allowed: &[Algorithm]) -> JwksKeys {
    let mut out = JwksKeys::default();
    for jwk in &set.keys {
        match JwtKey::from_jwk(jwk, allowed) {
            Ok(k) => out.keys.push(k),
            Err(e) => {
                let expected = jwk.common.public_key_use == Some(PublicKeyUse::Encryption)
                    || matches!(
                        jwk.common.key_algorithm,
                        Some(
                            KeyAlgorithm::RSA1_5
                                | KeyAlgorithm::RSA_OAEP
                                | KeyAlgorithm::RSA_OAEP_256
                        )
                    );
                out.skipped.push(SkippedKey {
                    kid: jwk.common.key_id.clone(),
                    why: e.to_string(),
                    expected,
                });
            }
        }
    }
    out
}

/// Parses a JWKS document, one key at a time: a key this library cannot even read (an
/// unknown `kty`, `alg` or curve) is skipped and reported rather than failing the whole
/// document, since key servers publish keys for other consumers too. Refused whole: a
/// document that is not `{"keys": [...]}`, or has more than [`MAX_JWKS_KEYS`] keys.
pub fn parse_jwks(json: &[u8]) -> Result<(JwkSet, Vec<SkippedKey>), KeyError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(json)
        .map_err(|e| KeyError::Jwks(format!("not a JWKS document ({{\"keys\": [...]}}): {e}")))?;
    if doc.keys.len() > MAX_JWKS_KEYS {
        return Err(KeyError::Jwks(format!(
            "{} keys, more than the {MAX_JWKS_KEYS} accepted",
            doc.keys.len()
        )));
    }
    let mut set = JwkSet { keys: Vec::new() };
    let mut skipped = Vec::new();
    for v in doc.keys {
        let kid = v.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let expected = v.get("use").and_then(|u| u.as_str()) == Some("enc");
        match serde_json::from_value::<Jwk>(v) {
            Ok(jwk) => set.keys.push(jwk),
            Err(e) => skipped.push(SkippedKey {
                kid,
                why: format!("unreadable: {e}"),
                expected,
            }),
        }
    }
    Ok((set, skipped))
}
