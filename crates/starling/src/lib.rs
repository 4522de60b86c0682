//! The Starling server: config file, listeners (TCP, TLS, WebSocket), authentication and
//! ACLs per listener, per-address connection limits, the connection task, reloads and graceful
//! shutdown, on tokio. The `starling` binary is a thin command line over this library, and black-box
//! tests start a [`server::Server`] on port 0 with it.

mod accept;
pub mod config;
pub mod connection;
pub mod http;
pub mod limiter;
mod listener;
pub mod logging;
pub mod passwd;
mod reload;
pub mod server;
pub mod storage;
pub mod tls;
pub mod ws;
