//! `[auth.jwt]`: the keys of the section, their defaults and bounds, and their checks (a
//! key source and an algorithm that go together, a JWKS URL that is https or loopback), and
//! the verifier's settings made from them.

use super::*;

/// The bounds of `[auth.jwt]`'s numeric keys.
pub mod bounds {
    use starling_broker::config::Bound;

    /// `jwks_refresh_secs`.
    pub const JWKS_REFRESH_SECS: Bound = Bound::new(10, 86_400, "one day");
    /// `jwks_min_refresh_secs`.
    pub const JWKS_MIN_REFRESH_SECS: Bound = Bound::new(1, 3_600, "one hour");
    /// `clock_skew_secs`.
    pub const CLOCK_SKEW_SECS: Bound = Bound::new(0, 3_600, "one hour");
}

/// Where clients put their token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFrom {
    /// The CONNECT Password (the User Name is then ignored).
    #[default]
    Password,
    /// The CONNECT User Name.
    Username,
}

/// `[auth.jwt]`: JWT authentication.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `password` (default) or `username`.
    pub token_from: TokenFrom,
    /// The algorithms tokens may be signed with (`HS256`, `RS256`, `PS256`, `ES256`,
    /// `EdDSA`, ...); required.
    pub algorithms: Vec<Algorithm>,
    /// An HMAC secret (its UTF-8 bytes), at least as long as the hash (32 bytes for HS256).
    /// Shown redacted by the admin API.
    pub secret: Option<String>,
    /// A file holding the HMAC secret (a trailing line break is ignored).
    pub secret_file: Option<PathBuf>,
    /// A PEM public key (or certificate) verifying RS*, PS*, ES* or EdDSA tokens.
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document's URL (https; http only to a loopback address).
    pub jwks_url: Option<String>,
    /// The CA (PEM) that signed the key server's certificate; set, it is the only one
    /// trusted. Unset: the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Seconds between two fetches of the JWKS.
    pub jwks_refresh_secs: u64,
    /// Fewest seconds between two fetches asked for by unknown key ids.
    pub jwks_min_refresh_secs: u64,
    /// The `iss` tokens must carry.
    pub issuer: Option<String>,
    /// The audiences this broker answers to (a string or a list); tokens must name one.
    /// Unset: tokens must not have an `aud`.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Option<Vec<String>>,
    /// How far the issuer's clock may be from the broker's, seconds (`exp`, `nbf`).
    pub clock_skew_secs: u64,
    /// The claim holding the username (default `sub`).
    pub username_claim: String,
    /// A claim the CONNECT client id must equal; unset: the client id is not checked.
    pub client_id_claim: Option<String>,
    /// The claim holding the client's ACL (default `acl`); `""`: tokens carry none.
    pub acl_claim: String,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Close the connection when the token expires (unless the client re-authenticated).
    pub disconnect_on_expiry: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            token_from: TokenFrom::Password,
            algorithms: Vec::new(),
            secret: None,
            secret_file: None,
            public_key_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_secs: 10,
            issuer: None,
            audience: None,
            clock_skew_secs: 30,
            username_claim: "sub".into(),
            client_id_claim: None,
            acl_claim: "acl".into(),
            require_exp: true,
            disconnect_on_expiry: true,
        }
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("JwtConfig")
            .field("token_from", &self.token_from)
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_ca_file", &self.jwks_ca_file)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwks_min_refresh_secs", &self.jwks_min_refresh_secs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("clock_skew_secs", &self.clock_skew_secs)
            .field("username_claim", &self.username_claim)
            .field("client_id_claim", &self.client_id_claim)
            .field("acl_claim", &self.acl_claim)
            .field("require_exp", &self.require_exp)
            .field("disconnect_on_expiry", &self.disconnect_on_expiry)
            .finish()
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

impl JwtConfig {
    /// Every numeric key with its value and its bound.
    pub fn bounded(&self) -> [(&'static str, u64, Bound); 3] {
        [
            (
                "jwks_refresh_secs",
                self.jwks_refresh_secs,
                bounds::JWKS_REFRESH_SECS,
            ),
            (
                "jwks_min_refresh_secs",
                self.jwks_min_refresh_secs,
                bounds::JWKS_MIN_REFRESH_SECS,
            ),
            (
                "clock_skew_secs",
                self.clock_skew_secs,
                bounds::CLOCK_SKEW_SECS,
            ),
        ]
    }

    /// Checks the table as `[auth.jwt]` and loads its keys (the secret file, the public key
    /// file); errors name `auth.jwt.<key>`. The JWKS URL is not fetched.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_at("auth.jwt")
    }

    /// As [`JwtConfig::validate`], naming keys `<prefix>.<key>`.
    pub fn validate_at(&self, prefix: &str) -> anyhow::Result<()> {
        self.settings(prefix).map(|_| ())
    }

    /// The verifier's settings: the table checked, the configured keys loaded.
    pub fn settings(&self, prefix: &str) -> anyhow::Result<JwtSettings> {
        remote::check_bounds(prefix, self.bounded())?;
        if self.jwks_min_refresh_secs > self.jwks_refresh_secs {
            bail!("{prefix}.jwks_min_refresh_secs: at most jwks_refresh_secs");
        }
        if self.algorithms.is_empty() {
            bail!(
                "{prefix}.algorithms: name the algorithms tokens are signed with, e.g. [\"RS256\"]"
            );
        }
        if self.secret.is_none()
            && self.secret_file.is_none()
            && self.public_key_file.is_none()
            && self.jwks_url.is_none()
        {
            bail!("{prefix}: give secret, secret_file, public_key_file or jwks_url");
        }
        if self.secret.is_some() && self.secret_file.is_some() {
            bail!("{prefix}.secret_file: give secret or secret_file, not both");
        }
        if self.jwks_ca_file.is_some() && self.jwks_url.is_none() {
            bail!("{prefix}.jwks_ca_file: only used with jwks_url");
        }
        if let Some(url) = &self.jwks_url {
            jwks_url(&format!("{prefix}.jwks_url"), url)?;
        }
        if let Some(f) = &self.jwks_ca_file
            && !f.is_file()
        {
            bail!(
                "{prefix}.jwks_ca_file: {} is not a readable file",
                f.display()
            );
        }
        if self.issuer.as_deref() == Some("") {
            bail!("{prefix}.issuer: empty (leave it out to accept any issuer)");
        }
        if let Some(aud) = &self.audience
            && (aud.is_empty() || aud.iter().any(String::is_empty))
        {
            bail!("{prefix}.audience: one or more non-empty names");
        }
        if self.username_claim.is_empty() {
            bail!("{prefix}.username_claim: empty");
        }
        if self.client_id_claim.as_deref() == Some("") {
            bail!("{prefix}.client_id_claim: empty (leave it out not to check client ids)");
        }
        let keys = self.static_keys(prefix)?;
        if self.jwks_url.is_none()
            && let Some(alg) = self
                .algorithms
                .iter()
                .find(|a| !keys.iter().any(|k| k.alg == **a))
        {
            bail!(
                "{prefix}.algorithms: {alg:?} is allowed but no configured key verifies it \
                 (remove it or give a key for it)"
            );
        }
        Ok(JwtSettings {
            token_source: match self.token_from {
                TokenFrom::Password => TokenSource::Password,
                TokenFrom::Username => TokenSource::Username,
            },
            keys,
            algorithms: self.algorithms.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            clock_skew: Duration::from_secs(self.clock_skew_secs),
            username_claim: self.username_claim.clone(),
            client_id_claim: self.client_id_claim.clone(),
            acl_claim: Some(self.acl_claim.clone()).filter(|c| !c.is_empty()),
            require_exp: self.require_exp,
            disconnect_on_expiry: self.disconnect_on_expiry,
        })
    }

    /// The keys of `secret` / `secret_file` and `public_key_file`.
    fn static_keys(&self, prefix: &str) -> anyhow::Result<Vec<JwtKey>> {
        let mut out = Vec::new();
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), _) => Some(("secret", s.as_bytes().to_vec())),
            (None, Some(path)) => {
                let mut s = std::fs::read(path).with_context(|| {
                    format!("{prefix}.secret_file: cannot read {}", path.display())
                })?;
                // Files written by editors and `echo` end with a line break, which is not
                // part of the secret.
                while s.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    s.pop();
                }
                Some(("secret_file", s))
            }
            (None, None) => None,
        };
        if let Some((key, bytes)) = secret {
            out.extend(
                keys::keys_from_secret(&bytes, &self.algorithms)
                    .map_err(|e| anyhow::anyhow!("{prefix}.{key}: {e}"))?,
            );
        }
        if let Some(path) = &self.public_key_file {
            let pem = std::fs::read(path).with_context(|| {
                format!("{prefix}.public_key_file: cannot read {}", path.display())
            })?;
            out.extend(keys::keys_from_pem(&pem, &self.algorithms).map_err(|e| {
                anyhow::anyhow!("{prefix}.public_key_file: {}: {e}", path.display())
            })?);
        }
        Ok(out)
    }
}

/// Parses the JWKS URL: https, or http to a loopback address only (keys fetched in clear
/// over a network could be replaced on the way, and with them every token accepted).
pub(super) fn jwks_url(key: &str, url: &str) -> anyhow::Result<Url> {
    let u = remote::parse_url(key, url)?;
    if u.scheme() == "http" {
        let host = u.host_str().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        if !loopback {
            bail!("{key}: must be an https:// URL (http:// only to a loopback address)");
        }
    }
    Ok(u)
}
