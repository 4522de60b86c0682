//! Who may use the HTTP API: an API key (`Authorization: Bearer KEY`), HTTP basic auth
//! against `[http] password_file` for users named in `admins` or `viewers`, or nobody at all
//! when the listener is open (by default only on a loopback address). Viewers read (GET);
//! admins also change. Every refusal is counted and logged, without the credential.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use starling_auth::{HashPool, PasswordAuthenticator};
use tracing::warn;

use super::AppState;
use super::apikey::{KeyCache, Role};
use super::error::ApiError;

/// The credentials the HTTP listener accepts.
#[derive(Debug)]
pub struct HttpAuth {
    /// Requests without credentials are served as an admin.
    pub open: bool,
    /// API keys.
    pub keys: KeyCache,
    /// Basic auth users, with the role lists.
    pub basic: Option<Arc<PasswordAuthenticator>>,
    /// Users of `basic` who may change things.
    pub admins: Vec<String>,
    /// Users of `basic` who may read.
    pub viewers: Vec<String>,
}

/// Who made a request.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The key's name, the user, or `anonymous`.
    pub name: String,
    /// What they may do.
    pub role: Role,
}

/// Why a request was refused.
#[derive(Debug)]
enum Refusal {
    /// No credentials on a listener that needs them.
    Missing,
    /// Credentials that are wrong, malformed, or of a user without a role.
    Invalid(&'static str),
    /// The password hashing threads' queue is full: the check could not be made now.
    Busy,
}

impl HttpAuth {
    /// Checks the request's credentials.
    async fn identify(&self, headers: &HeaderMap) -> Result<Identity, Refusal> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return if self.open {
                Ok(Identity {
                    name: "anonymous".into(),
                    role: Role::Admin,
                })
            } else {
                Err(Refusal::Missing)
            };
        };
        let value = value
            .to_str()
            .map_err(|_| Refusal::Invalid("malformed Authorization header"))?;
        let (scheme, rest) = value
            .split_once(' ')
            .ok_or(Refusal::Invalid("malformed Authorization header"))?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let keys = self.keys.current();
            return keys
                .verify(rest)
                .map(|e| Identity {
                    name: e.name.clone(),
                    role: e.role,
                })
                .ok_or(Refusal::Invalid("unknown API key"));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(Refusal::Invalid("malformed basic credentials"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or(Refusal::Invalid("malformed basic credentials"))?;
            let role = if self.admins.iter().any(|a| a == user) {
                Role::Admin
            } else if self.viewers.iter().any(|v| v == user) {
                Role::Viewer
            } else {
                return Err(Refusal::Invalid("user has no HTTP role"));
            };
            let Some(basic) = self.basic.clone() else {
                return Err(Refusal::Invalid("basic auth is not configured"));
            };
            let (user, password) = (user.to_owned(), password.to_owned());
            // Password hashes are slow by design: on the hashing threads MQTT logins use, behind
            // the same bounded queue (each argon2id check holds 46 MiB while it runs).
            let name = user.clone();
            let check =
                HashPool::shared().run(move || basic.verify(&user, password.as_bytes()), false);
            let Some(check) = check else {
                return Err(Refusal::Busy);
            };
            let ok = check.await;
            return if ok {
                Ok(Identity { name, role })
            } else {
                Err(Refusal::Invalid("bad user name or password"))
            };
        }
        Err(Refusal::Invalid("unsupported authorization scheme"))
    }
}

/// Whether a request with `method` needs an admin (anything that is not a read).
fn needs_admin(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware in front of everything but the health checks.
pub(super) async fn require(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    match state.auth.identify(req.headers()).await {
        Ok(id) => {
            if needs_admin(req.method()) && id.role != Role::Admin {
                state.http_refused.inc();
                warn!(%peer, %path, who = %id.name, method = %req.method(), "HTTP request refused: needs the admin role");
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("{} may only read", id.name),
                )
                .into_response();
            }
            req.extensions_mut().insert(id);
            next.run(req).await
        }
        Err(Refusal::Busy) => {
            state.http_refused.inc();
            warn!(%peer, %path, "HTTP request refused: password checks are queued to the limit");
            let mut r = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many password checks at once; try again",
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Err(refusal) => {
            state.http_refused.inc();
            let why = match refusal {
                Refusal::Missing => "credentials required",
                Refusal::Invalid(why) => why,
                Refusal::Busy => "busy",
            };
            warn!(%peer, %path, "HTTP request refused: {why}");
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_string())
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer, Basic realm=\"starling\""),
            );
            r
        }
    }
}
