//! The broker binary as its own process: a config written to a temporary directory, MQTT
//! and HTTP listeners on free ports, its standard error in a file, killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// A running `starling serve`.
pub(crate) struct Broker {
    pub(crate) child: Child,
    /// The MQTT listener.
    pub(crate) addr: SocketAddr,
    /// The HTTP listener.
    pub(crate) http: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// Starts `starling serve` with `config` (TOML) in `dir` (its data in `dir/data`) and
    /// `env` added to its environment. Does not wait for it.
    pub(crate) fn spawn(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let path = dir.join("starling.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("stderr-{}", addr.port()));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--bind", &addr.to_string()])
            .args(["--http-bind", &http.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Self {
            child,
            addr,
            http,
            log,
        }
    }

    /// Like [`Broker::spawn`], then waits until the MQTT listener accepts connections.
    pub(crate) async fn start(dir: &Path, config: &str) -> Self {
        let b = Self::spawn(dir, config, &[]);
        let started = Instant::now();
        while TcpStream::connect(b.addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "broker did not start: {}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b
    }

    /// What it has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`) with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `within`; returns its status and how long it
    /// took.
    pub(crate) async fn exit_within(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "still running {within:?} later; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
