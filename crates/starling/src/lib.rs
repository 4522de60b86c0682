//! The Starling server: config file, listeners (TCP, TLS, WebSocket, QUIC), authentication and
//! ACLs per listener, per-address connection limits, the connection task, reloads and graceful
//! shutdown, on tokio. The `starling` binary is a thin command line over this library, and black-box
//! tests start a [`server::Server`] on port 0 with it.

mod accept;
pub mod authn;
pub mod bridge;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod health;
pub mod http;
mod http_client;
pub mod import;
pub mod limiter;
mod listener;
pub mod logging;
pub mod notify;
pub mod passwd;
pub mod plugin;
mod priority;
mod proxy_protocol;
pub mod quic;
mod reload;
pub mod server;
pub mod signals;
pub mod storage;
pub mod tls;
mod trim;
mod unix;
pub mod version;
pub mod wakeup;
pub mod ws;
