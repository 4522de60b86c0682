//! The config file, black box: the `starling` binary started with a value beyond its bound
//! exits at once, non-zero, with a message naming the file and the key, and without a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the binary may take to refuse a config file.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// Kills and reaps the child on every path.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `starling serve` on `config` (with a listener on 127.0.0.1:0 before it) and returns
/// its exit status, the config file's path and what it wrote to stderr.
fn serve_with(dir: &Path, config: &str) -> (ExitStatus, String, String) {
    let path = dir.join("starling.toml");
    let text = format!("[[listener]]\nbind = \"127.0.0.1:0\"\n{config}");
    std::fs::write(&path, text).unwrap();
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("serve")
        .args(["--http-bind", "127.0.0.1:0"])
        .arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < EXIT_WITHIN,
            "still running after {EXIT_WITHIN:?} with {config:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    (status, path.display().to_string(), stderr)
}

#[test]
fn values_beyond_their_bounds_stop_the_binary_naming_the_file_and_the_key() {
    let cases = [
        (
            "[security]\nban_secs = 18446744073709551615\n",
            "security.ban_secs: must be at most 31536000 (one year), got 18446744073709551615",
        ),
        (
            "[limits]\nconnect_timeout_secs = 18446744073709551615\n",
            "limits.connect_timeout_secs: must be at most 3600 (one hour), got \
             18446744073709551615",
        ),
        (
            "[storage]\ncommit_interval_ms = 0\n",
            "storage.commit_interval_ms: must be at least 1, got 0",
        ),
    ];
    for (config, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (status, path, stderr) = serve_with(dir.path(), config);
        assert!(!status.success(), "{config:?}: {status}\n{stderr}");
        assert!(
            stderr.contains(&format!("invalid config file {path}")),
            "{config:?}: {stderr}"
        );
        assert!(stderr.contains(message), "{config:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{config:?}: {stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "{config:?}: the data directory was created before the config was checked"
        );
    }
}
