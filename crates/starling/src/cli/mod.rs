//! The MQTT client commands of the `starling` binary: `starling pub`, `starling sub` and
//! `starling rr`, with the flags, output formats and exit codes of mosquitto's
//! `mosquitto_pub`, `mosquitto_sub` and `mosquitto_rr`, so that scripts written for those keep
//! working when the name is changed. Each command parses its arguments (`opts`), opens a
//! transport (`net`: TCP, TLS, WebSocket or a Unix socket), and speaks MQTT through `client`,
//! which uses the broker's own codec. `format` prints received messages. `starling ctl` (`ctl`)
//! is the admin API from the terminal.

pub mod client;
pub mod ctl;
pub mod format;
pub mod net;
pub mod opts;
pub mod pubc;
pub mod rr;
pub mod strings;
pub mod subc;

/// mosquitto's exit code for a timeout (`MOSQ_ERR_TIMEOUT`), used by `sub -W` and `rr -W`.
pub const EXIT_TIMEOUT: i32 = 27;

/// Runs `future` on a small single-threaded runtime: the client commands need no more.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

use std::time::Duration;

use client::{Client, ClientError};
use opts::{ConnectOpts, PacketProperties};
use starling_proto::{ProtocolVersion, ReasonCode};

/// How long the broker has to answer CONNECT.
const CONNACK_TIMEOUT: Duration = Duration::from_secs(30);

/// mosquitto's exit code for a lost connection (`MOSQ_ERR_CONN_LOST`).
pub const EXIT_CONN_LOST: i32 = 7;

/// Prints an error unless `--quiet`.
pub(crate) fn error(quiet: bool, msg: impl std::fmt::Display) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// The exit status for an error on an open connection.
pub(crate) fn exit_for(e: &ClientError) -> i32 {
    match e {
        ClientError::Closed | ClientError::KeepAlive => EXIT_CONN_LOST,
        _ => 1,
    }
}

/// Opens the transport and connects; on failure prints what mosquitto's tools print and
/// returns their exit status (1 for bad flags or a socket error, the CONNACK code for a
/// refusal). Also returns the `-D` properties, for the packets that follow.
pub(crate) async fn open_session(
    conn: &ConnectOpts,
    version: ProtocolVersion,
) -> Result<(Client, PacketProperties), i32> {
    let (ep, props) = match (conn.endpoint(), conn.packet_properties()) {
        (Ok(ep), Ok(props)) => (ep, props),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return Err(1);
        }
    };
    let (ep, props) = (&ep, &props);
    let connect = conn
        .connect_packet(version, conn.client_id(""), ep, props)
        .map_err(|e| {
            eprintln!("{e}");
            1
        })?;
    let stream = net::open(ep, conn).await.map_err(|e| {
        error(conn.quiet, &e);
        1
    })?;
    let (client, ack) = Client::connect(stream, connect, conn.debug, CONNACK_TIMEOUT)
        .await
        .map_err(|e| {
            error(conn.quiet, &e);
            exit_for(&e)
        })?;
    if ack.reason != ReasonCode::Success {
        let (text, code) = strings::connack_refusal(version, ack.reason);
        error(conn.quiet, text);
        return Err(code);
    }
    Ok((client, props.clone()))
}

/// Resolves on SIGINT or SIGTERM (the client commands end cleanly on either).
pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
