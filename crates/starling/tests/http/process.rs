//! The broker binary as its own process, with its MQTT and HTTP listeners on free ports and
//! its log in a file.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `starling serve`, killed on drop.
pub(crate) struct Process {
    child: Child,
    /// The MQTT listener's port.
    pub(crate) mqtt: u16,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// Its standard error.
    pub(crate) log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Process {
    /// Starts the broker with `config` (TOML) and waits until `/readyz` answers.
    pub(crate) async fn start(config: &str) -> Self {
        Self::start_with(config, &[]).await
    }

    /// Like [`Process::start`], with `files` (name, contents) written to the directory that
    /// `{dir}` in `config` names.
    pub(crate) async fn start_with(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let (mqtt, http) = (free_port(), free_port());
        let path = dir.path().join("starling.toml");
        std::fs::write(
            &path,
            config.replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap();
        let log = dir.path().join("stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--bind", &format!("127.0.0.1:{mqtt}")])
            .args(["--http-bind", &format!("127.0.0.1:{http}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{http}");
        let p = Self {
            child,
            mqtt,
            base,
            log,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        while client
            .get(format!("{}/readyz", p.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "broker did not start: {}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    /// What it has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
