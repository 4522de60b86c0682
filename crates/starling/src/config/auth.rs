//! `[auth]`: the authentication and authorization backends listeners can put in their chains
//! (`auth = [...]`, `acl = [...]` on a listener), each configured once and shared by every
//! listener that lists it. Each backend's keys and checks live with the backend
//! (`crate::authn`); this section only gathers them and checks that every backend a listener
//! names is configured for what the listener asks of it.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::authn::http::HttpAuthConfig;
use crate::authn::introspect::IntrospectionConfig;
use crate::authn::jwt::JwtConfig;

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `[auth.jwt]`: tokens signed by the operator's identity service (or OAuth 2.0 JWT
    /// access tokens, with the issuer's JWKS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// `[auth.http]`: an HTTP service answering CONNECTs and ACL questions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpAuthConfig>,
    /// `[auth.introspection]`: OAuth 2.0 opaque access tokens, checked at the
    /// authorization server's introspection endpoint (RFC 7662).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionConfig>,
    /// `[auth.dynamic]`: clients, groups and roles managed at run time through the admin API
    /// and `starling ctl dynsec`, kept in the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<crate::authn::dynamic::DynamicConfig>,
}

impl AuthConfig {
    /// Each configured backend's own checks, then that every backend a listener names exists
    /// and does what the listener asks (an `http` in an `acl` chain needs an `acl_url`).
    pub(crate) fn validate(&self, listeners: &[super::ListenerConfig]) -> anyhow::Result<()> {
        if let Some(j) = &self.jwt {
            j.validate()?;
        }
        if let Some(h) = &self.http {
            h.validate()?;
        }
        if let Some(i) = &self.introspection {
            i.validate()?;
        }
        for (i, l) in listeners.iter().enumerate() {
            for name in l.auth.iter().flatten() {
                let configured = match name.as_str() {
                    "jwt" => self.jwt.is_some(),
                    "http" => self.http.as_ref().is_some_and(|h| h.url.is_some()),
                    "introspection" => self.introspection.is_some(),
                    "dynamic" => self.dynamic.is_some(),
                    // Checked with the listener, or the admin's to fill at run time.
                    _ => true,
                };
                if !configured {
                    bail!(
                        "listener[{i}].auth: {name:?} needs an [auth.{name}] section{}",
                        if name == "http" { " with a url" } else { "" }
                    );
                }
            }
            if l.auth_methods
                .iter()
                .any(|m| m == crate::authn::jwt_method::METHOD)
                && self.jwt.is_none()
            {
                bail!("listener[{i}].auth_methods: \"JWT\" needs an [auth.jwt] section");
            }
            for name in l.acl.iter().flatten() {
                if name == "dynamic" && self.dynamic.is_none() {
                    bail!("listener[{i}].acl: \"dynamic\" needs an [auth.dynamic] section");
                }
                if name == "http" && self.http.as_ref().is_none_or(|h| h.acl_url.is_none()) {
                    bail!(
                        "listener[{i}].acl: \"http\" needs an [auth.http] section with an acl_url"
                    );
                }
            }
        }
        Ok(())
    }
}
