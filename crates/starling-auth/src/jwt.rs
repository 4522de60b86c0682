//! JSON Web Tokens (RFC 7519) as MQTT credentials, OAuth 2.0 JWT access tokens (RFC 9068)
//! among them: a client sends a signed token as its password (or username); the token is
//! verified against the keys the operator configured and its claims become the client's
//! [`Grant`]: the username the broker uses, its own ACL rules, how long it may stay.
//!
//! This module owns the settings ([`JwtSettings`]), the key set (static keys plus a JWKS set
//! swapped at runtime, [`JwtVerifier::set_jwks`]; the keys themselves are [`keys`]),
//! verification ([`JwtVerifier::verify`], also usable for MQTT 5 re-authentication), and why
//! a token is refused ([`JwtError`], counted by [`JwtReason`]). It does no I/O: fetching a
//! key server's document is the broker's job, which hands the result here.
//!
//! The rules, after RFC 8725 (JWT best current practices):
//!
//! - Every key is pinned to one algorithm when it is loaded, and a token is checked only
//!   against keys of the algorithm its header names. A token signed HS256 with an RSA public
//!   key as the secret finds no HS256 key and is refused: the token never chooses how its
//!   signature is checked. `none` is not an algorithm here.
//! - Keys come only from the configuration: `jku`, `x5u`, `jwk` and `x5c` headers are
//!   ignored, and a `crit` header is refused (no extension is understood).
//! - `exp` (required by default) and `nbf` are checked with a clock skew; `iss` must equal
//!   the configured issuer; `aud` must name one of the configured audiences, and a token that
//!   names an audience where none is configured is refused (RFC 7519 §4.1.3).
//! - What is not a JWT at all (not three base64url parts with a JSON header) is not this
//!   backend's: [`JwtVerifier::check`] answers `None` and the next backend of the chain (a
//!   password file) is asked. What looks like one but fails is refused.

pub mod keys;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};

use crate::acl::{Access, AclFile};
use crate::chain::{Answer, AuthBackend, Grant, Verdict};
use crate::{ConnectInfo, DenyReason};

pub use jsonwebtoken::Algorithm;
pub use jsonwebtoken::jwk::JwkSet;
pub use keys::{JwksKeys, JwtKey, KeyError, MAX_JWKS_KEYS, SkippedKey};

/// Where the client puts its token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenSource {
    /// The CONNECT Password (the usual place; the User Name is then ignored).
    #[default]
    Password,
    /// The CONNECT User Name (for clients that cannot send a password alone).
    Username,
}

/// How tokens are checked.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// Where the token is.
    pub token_source: TokenSource,
    /// Keys known from the configuration (a secret, a public key file); keys of a JWKS
    /// document come through [`JwtVerifier::set_jwks`].
    pub keys: Vec<JwtKey>,
    /// The algorithms a token may use; any other is refused.
    pub algorithms: Vec<Algorithm>,
    /// The `iss` tokens must carry, if set.
    pub issuer: Option<String>,
    /// The audiences this broker answers to: a token's `aud` must name one. `None`: tokens
    /// must not have an `aud`.
    pub audience: Option<Vec<String>>,
    /// How far the broker's clock and the issuer's may differ (`exp`, `nbf`).
    pub clock_skew: Duration,
    /// The claim whose (string) value is the client's username.
    pub username_claim: String,
    /// When set, the CONNECT client id must equal this claim's value.
    pub client_id_claim: Option<String>,
    /// The claim holding the client's ACL, if any (see [`acl_from_claim`]).
    pub acl_claim: Option<String>,
    /// Refuse tokens without `exp` (tokens that never expire).
    pub require_exp: bool,
    /// Grant only until `exp`: the broker closes the connection then, unless the client
    /// re-authenticated.
    pub disconnect_on_expiry: bool,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            token_source: TokenSource::Password,
            keys: Vec::new(),
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            clock_skew: Duration::from_secs(30),
            username_claim: "sub".into(),
            client_id_claim: None,
            acl_claim: Some("acl".into()),
            require_exp: true,
            disconnect_on_expiry: true,
        }
    }
}

/// Why a token was refused, as a small fixed set for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtReason {
    /// `exp` has passed (beyond the clock skew).
    Expired,
    /// `nbf` has not come yet (beyond the clock skew).
    NotYetValid,
    /// No key of the token's algorithm verifies its signature.
    BadSignature,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    WrongAudience,
    /// No key for the token's `kid` and algorithm, or an algorithm not allowed.
    UnknownKey,
    /// A claim is missing or of the wrong type (`exp`, the username, the ACL).
    BadClaims,
    /// The client id is not the one the token was issued for.
    ClientIdMismatch,
    /// Not a well-formed JWT (broken encoding, header, or an algorithm such as `none`).
    Malformed,
}

impl JwtReason {
    /// How many reasons there are: the length of an array indexed by [`JwtReason::index`].
    pub const COUNT: usize = 9;

    /// Every reason, in [`JwtReason::index`] order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Expired,
        Self::NotYetValid,
        Self::BadSignature,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::UnknownKey,
        Self::BadClaims,
        Self::ClientIdMismatch,
        Self::Malformed,
    ];

    /// A distinct index below [`JwtReason::COUNT`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The reason's name in metrics and logs (`expired`, `bad_signature`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::UnknownKey => "unknown_key",
            Self::BadClaims => "bad_claims",
            Self::ClientIdMismatch => "client_id_mismatch",
            Self::Malformed => "malformed",
        }
    }
}

/// Why a token was refused, with what a log line needs. Values taken from the token are
/// clipped so that a client cannot fill the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// No key for the token's algorithm and key id (or the algorithm is not allowed).
    #[error("no key for alg {alg:?}{}", kid.as_ref().map(|k| format!(" and kid {k:?}")).unwrap_or_default())]
    UnknownKey {
        /// The token's `kid`, if it has one.
        kid: Option<String>,
        /// The token's algorithm.
        alg: Algorithm,
    },
    /// No key of the token's algorithm verifies its signature.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("expired {ago_secs} s ago")]
    Expired {
        /// Seconds since `exp`.
        ago_secs: u64,
    },
    /// `nbf` has not come yet.
    #[error("not valid for another {in_secs} s")]
    NotYetValid {
        /// Seconds until `nbf`.
        in_secs: u64,
    },
    /// `iss` is missing or not the configured issuer.
    #[error("issuer {0:?} is not accepted")]
    WrongIssuer(Option<String>),
    /// `aud` is missing, names none of the configured audiences, or is present where none
    /// is configured.
    #[error("audience: {0}")]
    WrongAudience(String),
    /// A claim is missing or of the wrong type.
    #[error("claims: {0}")]
    BadClaims(String),
    /// The client id differs from the token's.
    #[error("the client id is not the token's {claim:?} claim")]
    ClientIdMismatch {
        /// The configured claim.
        claim: String,
    },
}

impl JwtError {
    /// The reason, for counting.
    pub fn reason(&self) -> JwtReason {
        match self {
            Self::Malformed(_) => JwtReason::Malformed,
            Self::UnknownKey { .. } => JwtReason::UnknownKey,
            Self::BadSignature => JwtReason::BadSignature,
            Self::Expired { .. } => JwtReason::Expired,
            Self::NotYetValid { .. } => JwtReason::NotYetValid,
            Self::WrongIssuer(_) => JwtReason::WrongIssuer,
            Self::WrongAudience(_) => JwtReason::WrongAudience,
            Self::BadClaims(_) => JwtReason::BadClaims,
            Self::ClientIdMismatch { .. } => JwtReason::ClientIdMismatch,
        }
    }

    /// What the client is told: bad credentials (0x86) for a token that is not good, not
    /// authorized (0x87) for a good token issued to another client.
    pub fn deny_reason(&self) -> DenyReason {
        match self {
            Self::ClientIdMismatch { .. } => DenyReason::NotAuthorized,
            _ => DenyReason::BadUserNameOrPassword,
        }
    }
}

/// Longest piece of a token quoted in an error.
const CLIP: usize = 64;

fn clip(s: &str) -> String {
    if s.len() <= CLIP {
        return s.to_owned();
    }
    let mut end = CLIP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", s.get(..end).unwrap_or_default())
}

/// Rules an ACL claim may hold at most; a token is at most 64 KiB (an MQTT password), so
/// this only keeps one token from building a needlessly large rule set.
pub const MAX_ACL_RULES: usize = 256;

/// The three parts of a compact JWS, if `token` has exactly three dot-separated parts of
/// base64url characters, the first two non-empty (the signature of an unsigned token is
/// empty: such a token still looks like a JWT, and is refused as one).
fn parts(token: &str) -> Option<[&str; 3]> {
    let mut it = token.split('.');
    let (h, p, s) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || h.is_empty() || p.is_empty() {
        return None;
    }
    let b64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (b64url(h) && b64url(p) && b64url(s)).then_some([h, p, s])
}

/// The decoded header of `token`, if it has a JWT's shape: three base64url parts, the first
/// decoding to a JSON object. Passwords do not look like this by accident.
fn jwt_header(token: &str) -> Option<Vec<u8>> {
    let [h, _, _] = parts(token)?;
    let bytes = URL_SAFE_NO_PAD.decode(h).ok()?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    (*first == b'{').then_some(bytes)
}

/// Verifies tokens: the settings, the configured keys, and a JWKS key set that can be
/// replaced at any time (readers never wait for a swap).
#[derive(Debug)]
pub struct JwtVerifier {
    settings: JwtSettings,
    jwks: ArcSwap<Vec<JwtKey>>,
}

/// What [`JwtVerifier::set_jwks`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwksUpdate {
    /// Keys now in use from the document (the key id and algorithm of each).
    pub keys: Vec<(Option<String>, Algorithm)>,
    /// Keys left out, and why.
    pub skipped: Vec<SkippedKey>,
}

impl JwtVerifier {
    /// A verifier with `settings`. Refused: no algorithm allowed, or a configured key pinned
    /// to an algorithm that is not allowed.
    pub fn new(settings: JwtSettings) -> Result<Self, KeyError> {
        if settings.algorithms.is_empty() {
            return Err(KeyError::Settings(
                "no algorithm is allowed: name the ones tokens are signed with".into(),
            ));
        }
        if let Some(k) = settings
            .keys
            .iter()
            .find(|k| !settings.algorithms.contains(&k.alg))
        {
            return Err(KeyError::Settings(format!(
                "a key is for {:?}, which is not among the allowed algorithms",
                k.alg
            )));
        }
        if settings.username_claim.is_empty() {
            return Err(KeyError::Settings("the username claim is empty".into()));
        }
        Ok(Self {
            settings,
            jwks: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Replaces the JWKS keys with the usable keys of `set` (the configured keys stay).
    /// Tokens being verified meanwhile use the old set or the new one, never a mix.
    pub fn set_jwks(&self, set: &JwkSet) -> JwksUpdate {
        let taken = keys::keys_from_jwks(set, &self.settings.algorithms);
        let update = JwksUpdate {
            keys: taken.keys.iter().map(|k| (k.kid.clone(), k.alg)).collect(),
            skipped: taken.skipped,
        };
        self.jwks.store(Arc::new(taken.keys));
        update
    }

    /// Parses a JWKS document ([`keys::parse_jwks`]) and, if it has at least one usable key,
    /// makes its keys the JWKS keys. A document without any usable key is refused and the
    /// keys in use are kept: an empty or broken answer from a key server is far more likely
    /// a fault than a deliberate revocation of every key.
    pub fn load_jwks(&self, json: &[u8]) -> Result<JwksUpdate, KeyError> {
        let (set, mut unreadable) = keys::parse_jwks(json)?;
        let taken = keys::keys_from_jwks(&set, &self.settings.algorithms);
        unreadable.extend(taken.skipped);
        if taken.keys.is_empty() {
            let why: Vec<String> = unreadable
                .iter()
                .map(|s| format!("{}: {}", s.kid.as_deref().unwrap_or("(no kid)"), s.why))
                .collect();
            return Err(KeyError::Jwks(if why.is_empty() {
                "no keys".into()
            } else {
                format!("no usable key ({})", why.join("; "))
            }));
        }
        let update = JwksUpdate {
            keys: taken.keys.iter().map(|k| (k.kid.clone(), k.alg)).collect(),
            skipped: unreadable,
        };
        self.jwks.store(Arc::new(taken.keys));
        Ok(update)
    }

    /// How many JWKS keys are in use.
    pub fn jwks_len(&self) -> usize {
        self.jwks.load().len()
    }

    /// Whether any key (configured or from a JWKS document) is there to verify with.
    pub fn has_keys(&self) -> bool {
        !self.settings.keys.is_empty() || !self.jwks.load().is_empty()
    }

    /// The token in `info`'s credentials, if they carry something shaped like a JWT.
    pub fn token<'a>(&self, info: &ConnectInfo<'a>) -> Option<&'a str> {
        let raw = match self.settings.token_source {
            TokenSource::Password => std::str::from_utf8(info.password?).ok()?,
            TokenSource::Username => info.username?,
        };
        jwt_header(raw).map(|_| raw)
    }

    /// `None` when `info` carries no JWT (not this backend's client); otherwise the grant
    /// or why the token is refused.
    pub fn check(&self, info: &ConnectInfo<'_>) -> Option<Result<Grant, JwtError>> {
        let token = self.token(info)?;
        Some(self.verify(token, info.client_id))
    }

    /// Verifies `token` for a client with id `client_id`, now.
    pub fn verify(&self, token: &str, client_id: &str) -> Result<Grant, JwtError> {
        self.verify_at(token, client_id, SystemTime::now())
    }

    /// Verifies `token` for a client with id `client_id` at time `now`.
    pub fn verify_at(
        &self,
        token: &str,
        client_id: &str,
        now: SystemTime,
    ) -> Result<Grant, JwtError> {
        let header = jwt_header(token).ok_or_else(|| {
            JwtError::Malformed("not three base64url parts with a JSON header".into())
        })?;
        let header: Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
        if header.contains_key("crit") {
            return Err(JwtError::Malformed(
                "a crit header (no extension is supported)".into(),
            ));
        }
        let alg = match header.get("alg") {
            Some(Value::String(a)) => Algorithm::from_str(a).map_err(|_| {
                JwtError::Malformed(format!("algorithm {:?} is not accepted", clip(a)))
            })?,
            _ => return Err(JwtError::Malformed("no alg in the header".into())),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(JwtError::Malformed("kid is not a string".into())),
        };
        let unknown = || JwtError::UnknownKey {
            kid: kid.map(clip),
            alg,
        };
        if !self.settings.algorithms.contains(&alg) {
            return Err(unknown());
        }
        let jwks = self.jwks.load();
        // A key with a key id is tried only for tokens naming that id (or none); a key
        // without one, for any token of its algorithm.
        let candidates = self.settings.keys.iter().chain(jwks.iter()).filter(|k| {
            k.alg == alg
                && match (&k.kid, kid) {
                    (Some(have), Some(want)) => have == want,
                    _ => true,
                }
        });
        let mut tried = false;
        for key in candidates {
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation(alg)) {
                Ok(data) => return self.grant(&data.claims, client_id, now),
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => return Err(decode_error(&e)),
            }
        }
        Err(if tried {
            JwtError::BadSignature
        } else {
            unknown()
        })
    }

    /// The grant of verified `claims`, after checking them.
    fn grant(
        &self,
        claims: &Map<String, Value>,
        client_id: &str,
        now: SystemTime,
    ) -> Result<Grant, JwtError> {
        let s = &self.settings;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let skew = s.clock_skew.as_secs_f64();
        let exp = numeric_date(claims, "exp")?;
        match exp {
            None if s.require_exp => {
                return Err(JwtError::BadClaims(
                    "no exp (the token never expires)".into(),
                ));
            }
            Some(exp) if now >= exp + skew => {
                return Err(JwtError::Expired {
                    ago_secs: secs(now - exp),
                });
            }
            _ => {}
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && nbf > now + skew
        {
            return Err(JwtError::NotYetValid {
                in_secs: secs(nbf - now),
            });
        }
        if let Some(want) = &s.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == want => {}
                Some(Value::String(iss)) => return Err(JwtError::WrongIssuer(Some(clip(iss)))),
                _ => return Err(JwtError::WrongIssuer(None)),
            }
        }
        check_audience(s.audience.as_deref(), claims.get("aud"))?;
        let username = match claims.get(&s.username_claim) {
            Some(Value::String(u)) if !u.is_empty() && !u.contains('\0') => u.clone(),
            Some(Value::String(_)) => {
                return Err(JwtError::BadClaims(format!(
                    "{} is empty or holds a NUL character",
                    s.username_claim
                )));
            }
            Some(_) => {
                return Err(JwtError::BadClaims(format!(
                    "{} is not a string",
                    s.username_claim
                )));
            }
            None => {
                return Err(JwtError::BadClaims(format!(
                    "no {} claim (the username)",
                    s.username_claim
                )));
            }
        };
        if let Some(claim) = &s.client_id_claim {
            match claims.get(claim) {
                Some(Value::String(id)) if id == client_id => {}
                Some(Value::String(_)) | None => {
                    return Err(JwtError::ClientIdMismatch {
                        claim: claim.clone(),
                    });
                }
                Some(_) => return Err(JwtError::BadClaims(format!("{claim} is not a string"))),
            }
        }
        let acl = match s.acl_claim.as_ref().and_then(|c| claims.get(c)) {
            None | Some(Value::Null) => None,
            Some(v) => Some(Arc::new(acl_from_claim(v).map_err(|e| {
                JwtError::BadClaims(format!(
                    "{}: {e}",
                    s.acl_claim.as_deref().unwrap_or_default()
                ))
            })?)),
        };
        let valid_for = match exp {
            Some(exp) if s.disconnect_on_expiry => Some(remaining(exp, now, skew)),
            _ => None,
        };
        Ok(Grant {
            username: Some(username),
            acl,
            valid_for,
        })
    }
}

impl AuthBackend for JwtVerifier {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        Answer::Now(match self.check(info) {
            None => Verdict::Pass,
            Some(Ok(grant)) => Verdict::Allow(grant),
            Some(Err(e)) => {
                tracing::debug!(
                    client_id = info.client_id,
                    reason = e.reason().as_str(),
                    "JWT refused: {e}"
                );
                Verdict::Deny(e.deny_reason())
            }
        })
    }
}

/// Signature and algorithm only: the claims are checked by [`JwtVerifier::grant`], against
/// a clock the caller gives (jsonwebtoken reads its own), and with numeric dates that may
/// have fractions (RFC 7519 §2).
fn validation(alg: Algorithm) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

fn decode_error(e: &jsonwebtoken::errors::Error) -> JwtError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => JwtError::BadSignature,
        ErrorKind::Json(e) => JwtError::Malformed(format!("payload: {e}")),
        ErrorKind::Base64(e) => JwtError::Malformed(format!("encoding: {e}")),
        ErrorKind::Utf8(e) => JwtError::Malformed(format!("payload: {e}")),
        other => JwtError::Malformed(format!("{other:?}")),
    }
}

/// A NumericDate claim (seconds since the epoch, possibly with a fraction), if present.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() => Ok(Some(t)),
            _ => Err(JwtError::BadClaims(format!("{name} is not a number"))),
        },
        Some(_) => Err(JwtError::BadClaims(format!("{name} is not a number"))),
    }
}

/// Whole seconds of a non-negative interval, saturating.
fn secs(t: f64) -> u64 {
    // `as` saturates for floats: negative and NaN give 0, huge values u64::MAX.
    t.max(0.0) as u64
}

/// The longest validity a grant carries: beyond it the expiry is so far that the clock
/// arithmetic of whoever schedules the disconnection must not be asked to add it.
const MAX_VALID_FOR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How long a token with expiry `exp` stays valid from `now`: until `exp`; for a token
/// accepted only thanks to the clock skew (`exp` just passed), what is left of the skew, so
/// that it is not closed before it could do anything.
fn remaining(exp: f64, now: f64, skew: f64) -> Duration {
    let left = if exp > now {
        exp - now
    } else {
        exp + skew - now
    };
    Duration::try_from_secs_f64(left.max(0.0))
        .unwrap_or(MAX_VALID_FOR)
        .min(MAX_VALID_FOR)
}

fn check_audience(want: Option<&[String]>, aud: Option<&Value>) -> Result<(), JwtError> {
    let names: Vec<&str> = match aud {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => {
            let mut names = Vec::with_capacity(items.len());
            for i in items {
                match i.as_str() {
                    Some(a) => names.push(a),
                    None => return Err(JwtError::BadClaims("aud holds a non-string".into())),
                }
            }
            names
        }
        Some(_) => return Err(JwtError::BadClaims("aud is not a string or a list".into())),
    };
    match want {
        None if aud.is_some() => Err(JwtError::WrongAudience(
            "the token names an audience and none is configured".into(),
        )),
        None => Ok(()),
        Some(_) if aud.is_none() => Err(JwtError::WrongAudience("the token has no aud".into())),
        Some(want) if names.iter().any(|n| want.iter().any(|w| w == n)) => Ok(()),
        Some(_) => Err(JwtError::WrongAudience(format!(
            "{:?} names no configured audience",
            names.iter().take(4).map(|n| clip(n)).collect::<Vec<_>>()
        ))),
    }
}

/// Rules from an ACL claim, as pattern rules (`%c` and `%u` substituted as whole levels).
/// The shapes are those the HTTP backend accepts in its answers, so that one rule format
/// serves both:
///
/// - An object of topic lists: `{"pub": [...], "sub": [...], "all": [...]}` (`publish` and
///   `subscribe` for `pub` and `sub`). `pub` grants publishing (write), `sub` subscribing
///   and receiving (read), `all` both. A single string stands for a list of one.
/// - A list of rules, EMQX's form: `{"permission": "allow" | "deny", "action": "publish" |
///   "subscribe" | "all", "topic": "..."}` (or `"topics": [...]`; `permission` defaults to
///   allow, `action` to all), or plain topic strings (publish and subscribe). A deny rule
///   denies the topic whatever its action (the rules have no per-action deny).
///
/// `${clientid}` and `${username}` (EMQX's placeholders) are read as `%c` and `%u`. Nothing
/// grants more than the issuer meant: a rule with a condition the broker does not check
/// (`qos`, `retain`, ...) is left out when it allows and applied without the condition when
/// it denies; an unknown key of the object form, or an `eq` topic, is an error.
pub fn acl_from_claim(claim: &Value) -> Result<AclFile, String> {
    let mut rules: Vec<(Access, String)> = Vec::new();
    match claim {
        Value::Object(lists) => {
            for (key, topics) in lists {
                let access = match key.as_str() {
                    "pub" | "publish" => Access::Write,
                    "sub" | "subscribe" => Access::Read,
                    "all" => Access::ReadWrite,
                    // A key not understood may be a restriction: refuse rather than grant
                    // what it might have withheld.
                    other => return Err(format!("unknown key {:?}", clip(other))),
                };
                match topics {
                    Value::Array(items) => {
                        for t in items {
                            push_rule(&mut rules, access, t)?;
                        }
                    }
                    t => push_rule(&mut rules, access, t)?,
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(_) => push_rule(&mut rules, Access::ReadWrite, item)?,
                    Value::Object(rule) => rule_object(rule, &mut rules)?,
                    _ => return Err("a rule that is neither a topic nor an object".into()),
                }
            }
        }
        _ => return Err("not an object or a list".into()),
    }
    AclFile::from_patterns(rules.iter().map(|(a, t)| (*a, t.as_str())))
        .map_err(|e| format!("rule {}: {}", e.line, e.message))
}

fn push_rule(
    rules: &mut Vec<(Access, String)>,
    access: Access,
    topic: &Value,
) -> Result<(), String> {
    let t = topic
        .as_str()
        .ok_or_else(|| format!("topic {:?} is not a string", clip(&topic.to_string())))?;
    if t.starts_with("eq ") {
        return Err(format!("{:?}: eq topics are not supported", clip(t)));
    }
    if rules.len() == MAX_ACL_RULES {
        return Err(format!("more than {MAX_ACL_RULES} rules"));
    }
    rules.push((
        access,
        t.replace("${clientid}", "%c").replace("${username}", "%u"),
    ));
    Ok(())
}

/// One rule object of the list form.
fn rule_object(rule: &Map<String, Value>, rules: &mut Vec<(Access, String)>) -> Result<(), String> {
    let text = |key: &str, default: &str| match rule.get(key) {
        None | Some(Value::Null) => Ok(default.to_owned()),
        Some(Value::String(s)) => Ok(s.to_ascii_lowercase()),
        Some(_) => Err(format!("a rule's {key} is not a string")),
    };
    let deny = match text("permission", "allow")?.as_str() {
        "allow" => false,
        "deny" => true,
        other => return Err(format!("unknown permission {:?}", clip(other))),
    };
    let access = match text("action", "all")?.as_str() {
        "publish" | "subscribe" | "all" if deny => Access::Deny,
        "publish" => Access::Write,
        "subscribe" => Access::Read,
        "all" => Access::ReadWrite,
        other => return Err(format!("unknown action {:?}", clip(other))),
    };
    let mut topics: Vec<&Value> = Vec::new();
    match rule.get("topic") {
        None | Some(Value::Null) => {}
        Some(t) => topics.push(t),
    }
    match rule.get("topics") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ts)) => topics.extend(ts),
        Some(_) => return Err("a rule's topics is not a list".into()),
    }
    if topics.is_empty() {
        return Err("a rule without a topic".into());
    }
    let conditional = rule
        .keys()
        .any(|k| !matches!(k.as_str(), "permission" | "action" | "topic" | "topics"));
    if conditional && !deny {
        // The broker cannot check the condition (qos, retain, ...): granting without it would
        // grant more than the issuer meant.
        return Ok(());
    }
    for t in topics {
        push_rule(rules, access, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
