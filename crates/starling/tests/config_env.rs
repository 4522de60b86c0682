//! Environment overrides and `starling check-config`, black box: the binary started with
//! `STARLING_LISTENER_0_BIND` listens there; a misspelt variable stops it naming the
//! variable; `check-config` answers `FILE: OK` or names the key, with exit codes to match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(10);

/// Kills and reaps the child on every path.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary, with no `STARLING_*` variable inherited from the test's environment.
fn starling() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_starling"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STARLING_") {
            c.env_remove(name);
        }
    }
    c.stdin(Stdio::null());
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A clean-session MQTT 3.1.1 CONNECT with an empty client id; true when CONNACK 0 comes back.
fn mqtt_connects(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0];
    if s.write_all(&connect).is_err() {
        return false;
    }
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).is_ok() && connack == [0x20, 2, 0, 0]
}

#[test]
fn the_broker_listens_where_the_environment_says() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = starling()
        .arg("serve")
        .args(["--http-bind", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("STARLING_LISTENER_0_BIND", format!("127.0.0.1:{port}"))
        .env("STARLING_STORAGE_DURABILITY", "memory")
        .env("STARLING_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let started = Instant::now();
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!("the broker exited: {status}");
        }
        if mqtt_connects(port) {
            break;
        }
        assert!(
            started.elapsed() < WITHIN,
            "no MQTT on 127.0.0.1:{port} (STARLING_LISTENER_0_BIND) within {WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not on the default port's listener: the override replaced it, it did not add one.
    assert!(running.0.try_wait().unwrap().is_none());
}

/// Runs the binary to completion (bounded).
fn run(mut c: Command) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut running = Running(child);
    loop {
        if running.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(started.elapsed() < WITHIN, "still running after {WITHIN:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    running
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    running
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Output {
        status: running.0.wait().unwrap(),
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

#[test]
fn a_misspelt_variable_stops_the_broker_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = starling();
    c.arg("serve")
        .args(["--http-bind", "127.0.0.1:0", "--bind", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("STARLING_LIMITS_MAX_INFLIHGT", "10");
    let out = run(c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("environment variable STARLING_LIMITS_MAX_INFLIHGT (limits.max_inflihgt)"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `max_inflihgt`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.path().join("data").exists());
}

fn check_config(path: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = starling();
    c.arg("check-config").arg(path);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run(c);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_says_ok_or_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("starling.toml");
    let passwd = dir.path().join("passwd");
    let mut c = starling();
    c.arg("passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["alice", "secret"]);
    assert!(run(c).status.success());
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n[[listener]]\nbind = \"0.0.0.0:1884\"\n\
             password_file = \"{}\"\n[limits]\nmax_inflight = 10\n",
            passwd.display()
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check_config(&path, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}: OK\n", path.display()));

    // The environment is checked with the file.
    let (ok, stdout, stderr) = check_config(&path, &[("STARLING_LIMITS_MAX_INFLIGHT", "0")]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("STARLING_LIMITS_MAX_INFLIGHT")
            && stderr.contains("limits.max_inflight: must be at least 1, got 0"),
        "{stderr}"
    );

    for (text, key) in [
        (
            "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"nowhere\"\n",
            "listener[1].bind",
        ),
        ("[limits]\nmax_inflight = 0\n", "limits.max_inflight"),
        ("[storage]\ndurability = \"fast\"\n", "storage.durability"),
    ] {
        std::fs::write(&path, text).unwrap();
        let (ok, stdout, stderr) = check_config(&path, &[]);
        assert!(!ok, "{text:?}: {stdout}");
        assert!(
            stderr.contains(&format!("invalid config file {}", path.display())),
            "{stderr}"
        );
        assert!(stderr.contains(key), "{text:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // The files it names are loaded too.
    std::fs::write(
        &path,
        "[[listener]]\nbind = \"127.0.0.1:1\"\npassword_file = \"/nonexistent/passwd\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = check_config(&path, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("listener[0]") && stderr.contains("/nonexistent/passwd"),
        "{stderr}"
    );

    let (ok, _, stderr) = check_config(&dir.path().join("missing.toml"), &[]);
    assert!(!ok);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn import_mosquitto_writes_a_config_check_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        "listener 1883 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 5\n\
         connection cloud\naddress example.com\ntopic sensors/# out 1 \"\" site-1/\n\
         start_type lazy\n",
    )
    .unwrap();
    let out_path = dir.path().join("starling.toml");
    let mut c = starling();
    c.arg("import-mosquitto")
        .arg(&conf)
        .arg("-o")
        .arg(&out_path);
    let out = run(c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The bridge is carried over; what it cannot carry is named with its line.
    assert!(
        stderr.contains("mosquitto.conf:7: `start_type lazy`"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = check_config(&out_path, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.ends_with(": OK\n"));
    let toml = std::fs::read_to_string(&out_path).unwrap();
    assert!(toml.contains("max_inflight = 5"), "{toml}");
    assert!(
        toml.contains("[[bridge]]") && toml.contains("remote_prefix = \"site-1/\""),
        "{toml}"
    );

    // Without -o: the TOML on standard output.
    let mut c = starling();
    c.arg("import-mosquitto").arg(&conf);
    let out = run(c);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), toml);
}
