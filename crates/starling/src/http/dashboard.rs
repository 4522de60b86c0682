//! `GET /`: the dashboard, one HTML page with its script and styles inline, embedded in the
//! binary (no CDN, no build step). It reads the admin API with the browser's credentials and
//! talks MQTT over the broker's WebSocket listener for its client page.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

const INDEX: &str = include_str!("dashboard/index.html");

/// The dashboard's routes.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/", get(index))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
            ),
        ],
        INDEX,
    )
}
