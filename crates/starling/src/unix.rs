//! Unix domain socket listeners (`protocol = "unix"`): binding the socket file (a stale one
//! left by a broker that died is replaced, anything else at the path is an error), its
//! permissions (`mode`), the accept loop, and removing the file at shutdown.
//!
//! A Unix socket client has no IP address: the per-address limits and bans do not apply
//! (the file's permissions say who may connect), and the connecting process's user id,
//! from the socket's peer credentials, is given to authentication (`ConnectInfo::unix_uid`,
//! the HTTP backend's `unix_uid` field) and written in the connection's log lines.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use starling_broker::{Broker, PeerInfo};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::accept::take_permits;
use crate::connection::{Client, Stop, StreamOptions};
use crate::listener::ListenerRuntime;

/// Binds `path`. A socket file already there is removed first when nothing answers on it
/// (a broker that did not shut down cleanly); a live socket, or a file of another kind, is
/// an error and left alone. `mode`: the file's permissions.
pub(crate) fn bind(path: &Path, mode: Option<u32>) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "{}: another process is listening on this socket",
                    path.display()
                );
            }
            info!(path = %path.display(), "removing a stale socket file");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{}: exists and is not a socket (not removed)",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the Unix socket {}", path.display()))?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    Ok(listener)
}

/// Removes the socket file at shutdown, if it is still a socket.
fn remove(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && let Err(e) = std::fs::remove_file(path) {
        warn!(path = %path.display(), error = %e, "cannot remove the socket file");
    }
}

/// Accepts connections on a Unix socket until shutdown, then removes the socket file.
pub(crate) async fn accept_loop(
    listener: UnixListener,
    path: PathBuf,
    rt: Arc<ListenerRuntime>,
    broker: Arc<Broker>,
    permits: Arc<Semaphore>,
    stop: Arc<Stop>,
) {
    loop {
        tokio::select! {
            () = stop.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(permits) = take_permits(&permits, &rt, &broker) else {
                        continue;
                    };
                    rt.accepted.inc();
                    let uid = match stream.peer_cred() {
                        Ok(cred) => Some(cred.uid()),
                        Err(e) => {
                            debug!(error = %e, "no peer credentials on a Unix socket");
                            None
                        }
                    };
                    debug!(listener = %rt.access.name, ?uid, "Unix socket connection");
                    let info = PeerInfo {
                        addr: None,
                        certificate_identity: None,
                        unix_uid: uid,
                    };
                    let client = Client::new(None, Instant::now(), rt.access.clone(), info, &stop);
                    let options = StreamOptions {
                        flush: false,
                    };
                    // Detached: the global permit it holds is how shutdown waits for it.
                    tokio::spawn(crate::connection::serve(
                        stream,
                        client,
                        broker.clone(),
                        options,
                        permits,
                    ));
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    remove(&path);
}
