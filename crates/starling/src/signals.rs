//! The process's stop signals. The first SIGTERM or SIGINT starts a graceful shutdown; from
//! then on a second one ends the process at once (exit status 128 + the signal: 143 for
//! SIGTERM, 130 for SIGINT), and so does a shutdown still running [`SHUTDOWN_BOUND`] after
//! the first signal (status [`EXIT_SHUTDOWN_TIMEOUT`]). Either way what the store committed
//! stays, as after `kill -9`. SIGHUP (reload) is handled by `server::run`.

use std::time::Duration;

use tracing::{error, info, warn};

/// The longest a graceful shutdown may take, from the first signal to the process's exit.
/// Connections get at most `server`'s grace period of 5 s; the rest is for the final commit
/// of the store. Below Docker's default stop timeout (10 s) and the unit's `TimeoutStopSec`.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(8);

/// Exit status when the graceful shutdown did not finish within [`SHUTDOWN_BOUND`].
pub const EXIT_SHUTDOWN_TIMEOUT: i32 = 1;

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (`kill`, systemd, Docker).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl StopSignal {
    /// The exit status of a process ended by this signal at once: 128 + its number.
    pub fn exit_status(self) -> i32 {
        match self {
            Self::Terminate => 128 + 15,
            Self::Interrupt => 128 + 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
        }
    }
}

/// The stop signals, registered: from [`Signals::install`] on, SIGTERM and SIGINT no longer
/// end the process by themselves.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers; needs a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next stop signal.
    pub async fn next(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.term.recv() => StopSignal::Terminate,
                Some(()) = self.int.recv() => StopSignal::Interrupt,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => StopSignal::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Resolves on the first stop signal, and leaves a task behind that ends the process on
    /// a second one or once [`SHUTDOWN_BOUND`] has passed, whichever comes first.
    pub async fn shutdown_requested(mut self) {
        let first = self.next().await;
        info!(
            "{}: shutting down within {SHUTDOWN_BOUND:?} (another signal exits at once)",
            first.name()
        );
        tokio::spawn(async move {
            tokio::select! {
                second = self.next() => {
                    error!("{} during shutdown: exiting at once", second.name());
                    std::process::exit(second.exit_status());
                }
                () = tokio::time::sleep(SHUTDOWN_BOUND) => {
                    error!("shutdown still running after {SHUTDOWN_BOUND:?}: exiting");
                    std::process::exit(EXIT_SHUTDOWN_TIMEOUT);
                }
            }
        });
    }
}

/// Resolves on the first SIGINT or SIGTERM, with the behaviour of
/// [`Signals::shutdown_requested`]; if the handlers cannot be registered, it logs why and
/// never resolves (the signals then end the process the default way).
pub async fn shutdown_signal(signals: std::io::Result<Signals>) {
    match signals {
        Ok(s) => s.shutdown_requested().await,
        Err(e) => {
            warn!("cannot handle SIGTERM and SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    }
}
