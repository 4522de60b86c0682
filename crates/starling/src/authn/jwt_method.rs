//! `JWT` as an MQTT 5 enhanced authentication method: the token is the Authentication Data of
//! CONNECT, and of the AUTH 0x19 with which a client re-authenticates before its token
//! expires. One step each way: the broker answers success or failure at once. A successful
//! re-authentication replaces the connection's rules and its end with the new token's; the
//! identity must stay the same (the broker checks it).
//!
//! The exchange is answered from the keys the broker has: a token naming a key it does not
//! know fails here, where a CONNECT with the token as password would wait for the key set's
//! refresh (the `jwt` backend of a listener's chain).

use std::sync::Arc;

use starling_auth::{AuthExchange, AuthStep, DenyReason, EnhancedAuth, ExchangeInfo};

use super::jwt::JwtBackend;

/// The method's name in the Authentication Method property.
pub const METHOD: &str = "JWT";

/// The `JWT` enhanced authentication method over `[auth.jwt]`.
#[derive(Debug)]
pub struct JwtMethod(pub Arc<JwtBackend>);

impl EnhancedAuth for JwtMethod {
    fn method(&self) -> &str {
        METHOD
    }
    fn exchange(&self) -> Box<dyn AuthExchange> {
        Box::new(Exchange(self.0.clone()))
    }
}

#[derive(Debug)]
struct Exchange(Arc<JwtBackend>);

impl AuthExchange for Exchange {
    fn start(&mut self, info: &ExchangeInfo<'_>, data: Option<&[u8]>) -> AuthStep {
        let Some(token) = data.and_then(|d| std::str::from_utf8(d).ok()) else {
            return AuthStep::Fail(DenyReason::BadUserNameOrPassword);
        };
        let result = match self.0.verify(token, info.client_id) {
            starling_auth::Answer::Now(r) => r,
            // An unknown key: the key set is being refreshed, but an exchange cannot wait.
            starling_auth::Answer::Later(_) => {
                return AuthStep::Fail(DenyReason::BadUserNameOrPassword);
            }
        };
        match result {
            Ok(grant) => match grant.username {
                Some(username) => AuthStep::Success {
                    username,
                    data: None,
                    acl: grant.acl,
                    valid_for: grant.valid_for,
                },
                None => AuthStep::Fail(DenyReason::NotAuthorized),
            },
            Err(e) => AuthStep::Fail(e.deny_reason()),
        }
    }

    fn next(&mut self, _data: Option<&[u8]>) -> AuthStep {
        // One step only: a second message is not part of this method.
        AuthStep::Fail(DenyReason::NotAuthorized)
    }
}
