//! The packaging files and the commands they rely on: the systemd unit (checked by
//! `systemd-analyze verify` where it exists), the configs shipped for Debian and Docker, the
//! Dockerfile, the `cargo deb` definition, `--version`, `starling man`, `starling
//! completions` and `starling health`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use starling::config::{Config, is_loopback};

use crate::process::{BIN, Broker, free_port};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn the_unit_is_a_hardened_notify_service_and_passes_systemd_analyze_verify() {
    let unit = read("packaging/systemd/starling.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/bin/starling serve --config /etc/starling/starling.toml",
        "User=starling",
        "StateDirectory=starling",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "LimitNOFILE=1048576",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit has no line {line:?}"
        );
    }
    // The stop timeout leaves room for the broker's own bound.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec=Ns");
    assert!(Duration::from_secs(stop) > starling::signals::SHUTDOWN_BOUND);

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // verify checks that ExecStart's binary exists and that Documentation's manual pages
    // are installed: point it at the binary under test, and leave the pages out (the
    // Debian package installs them).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("starling.service");
    let checked: Vec<String> = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| l.replace("/usr/bin/starling", BIN))
        .collect();
    std::fs::write(&path, checked.join("\n")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    // Unknown or malformed settings are only warnings, naming the file.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("starling.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{said}");
}

#[test]
fn the_debian_config_loads_and_serves_this_machine_only() {
    let path = root().join("packaging/starling.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.data_dir, Path::new("/var/lib/starling"));
    assert!(!c.listeners.is_empty());
    for l in &c.listeners {
        assert!(is_loopback(l.bind.ip()), "{}", l.bind);
    }
    assert!(is_loopback(c.http.bind.ip()));
    // Its commented-out listeners (network, Unix socket, behind a proxy) are valid too once
    // uncommented.
    let text = std::fs::read_to_string(&path).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with("[[listener]]") || rest.contains(" = ") => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(&uncommented).unwrap();
    let network = (c.listeners.iter())
        .find(|l| l.bind.to_string() == "0.0.0.0:8883")
        .unwrap();
    assert!(!network.allows_anonymous());
    let unix = (c.listeners.iter())
        .find(|l| l.protocol() == starling::config::Protocol::Unix)
        .unwrap();
    assert_eq!(unix.unix_mode(), Some(0o660));
    let proxied = c
        .listeners
        .iter()
        .find(|l| l.proxy_protocol.is_some())
        .unwrap();
    assert!(!proxied.allows_anonymous());
}

#[test]
fn the_container_config_binds_every_address_and_fails_closed() {
    let path = root().join("packaging/docker/starling.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.data_dir, Path::new("/var/lib/starling"));
    let l = &c.listeners[0];
    assert_eq!(l.bind.to_string(), "0.0.0.0:1883");
    assert!(!l.allows_anonymous(), "anonymous clients from the network");
    let passwd = l.password_file.clone().expect("a password file");
    assert_eq!(passwd, Path::new("/etc/starling/passwd"));
    // The image's HEALTHCHECK asks the default URL, which is this config's HTTP listener.
    assert_eq!(
        format!("http://{}/healthz", c.http.bind),
        starling::health::DEFAULT_URL
    );
    // Without the password file the broker does not start, and says which file it lacks.
    if passwd.exists() {
        eprintln!("SKIPPED the start check: {} exists here", passwd.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-bind", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/etc/starling/passwd"), "{err}");
}

#[test]
fn the_dockerfile_builds_from_debian_runs_unprivileged_and_checks_health() {
    let d = read("Dockerfile");
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms.iter().all(|f| f.contains("bookworm")), "{froms:?}");
    for needed in [
        "USER starling",
        "VOLUME [\"/var/lib/starling\"]",
        "COPY packaging/docker/starling.toml /etc/starling/starling.toml",
        "STARLING_GIT_COMMIT=\"${STARLING_COMMIT}\"",
        "cargo build --release --locked -p starling",
    ] {
        assert!(d.contains(needed), "the Dockerfile has no {needed:?}");
    }
    let health = d
        .lines()
        .find(|l| l.trim_start().starts_with("CMD [\"starling\", \"health\""))
        .expect("a HEALTHCHECK running starling health");
    assert!(health.contains(starling::health::DEFAULT_URL), "{health}");
    let ignored = read(".dockerignore");
    for p in [".git", "target"] {
        assert!(ignored.lines().any(|l| l == p), ".dockerignore lacks {p}");
    }
}

#[test]
fn the_deb_definition_names_files_that_exist_or_that_build_deb_makes() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let script = read("packaging/build-deb.sh");
    let mut dests = Vec::new();
    for asset in deb["assets"].as_array().unwrap() {
        let source = asset[0].as_str().unwrap();
        dests.push(asset[1].as_str().unwrap().to_owned());
        if source == "target/release/starling" {
            continue;
        }
        if let Some(made) = source.strip_prefix("target/release/") {
            // Made by build-deb.sh: the directory (and, for single files, the name) it writes.
            let (dir, name) = made.rsplit_once('/').unwrap();
            let dir = dir.strip_prefix("packaging").unwrap();
            assert!(script.contains(&format!("$out{dir}")), "{source}");
            if !name.contains('*') {
                assert!(script.contains(&format!("{dir}/{name}")), "{source}");
            }
            continue;
        }
        assert!(crate_dir.join(source).exists(), "asset {source} is missing");
    }
    for conf in deb["conf-files"].as_array().unwrap() {
        let conf = conf.as_str().unwrap().trim_start_matches('/');
        assert!(
            dests.iter().any(|d| d == conf),
            "conf-file {conf} is not installed"
        );
    }
    let scripts = crate_dir.join(deb["maintainer-scripts"].as_str().unwrap());
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    assert!(postinst.contains("#DEBHELPER#"));
    assert!(postinst.contains("adduser --system --group"));
    let units = crate_dir.join(deb["systemd-units"]["unit-scripts"].as_str().unwrap());
    assert!(units.join("starling.service").exists());
    assert!(
        !manifest["package"]
            .as_table()
            .unwrap()
            .contains_key("repository")
    );
}

#[test]
fn version_names_the_commit() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "starling {} (commit {})\n",
        env!("CARGO_PKG_VERSION"),
        starling::version::COMMIT
    );
    assert_eq!(text, expected);
    let git = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output();
    match git {
        Ok(g) if g.status.success() && std::env::var_os("STARLING_GIT_COMMIT").is_none() => {
            let head = String::from_utf8(g.stdout).unwrap();
            assert!(
                starling::version::COMMIT.starts_with(head.trim()),
                "built from {}, HEAD is {head}",
                starling::version::COMMIT
            );
        }
        _ => eprintln!("SKIPPED the commit check: not in a git checkout"),
    }
}

#[test]
fn man_and_completions_come_from_the_command_line_definition() {
    let out = run(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH starling 1"),
        "{page}"
    );
    for command in ["serve", "passwd", "apikey", "health", "completions", "man"] {
        assert!(
            page.contains(command),
            "the manual page does not mention {command}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in ["starling.1", "starling-serve.1", "starling-health.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    for (shell, marker) in [
        ("bash", "_starling()"),
        ("zsh", "#compdef starling"),
        ("fish", "complete -c starling"),
    ] {
        let out = run(&["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("serve"), "{shell}");
    }
    assert!(!run(&["completions", "no-such-shell"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_the_http_listener_and_metrics_name_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "").await;
    let url = format!("http://{}/healthz", broker.http);
    // The HTTP listener may open a moment after the MQTT one.
    let mut out = run(&["health", &url]);
    for _ in 0..100 {
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        out = run(&["health", &url]);
    }
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HTTP/1.1 200 OK\n");
    let ready = run(&["health", &format!("http://{}/readyz", broker.http)]);
    assert!(ready.status.success(), "{ready:?}");
    let missing = run(&["health", &format!("http://{}/no-such-page", broker.http)]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );
    let closed = run(&[
        "health",
        "--timeout",
        "2",
        &format!("http://127.0.0.1:{}/healthz", free_port()),
    ]);
    assert_eq!(closed.status.code(), Some(1));

    let metrics = reqwest::get(format!("http://{}/metrics", broker.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let info = format!(
        "starling_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        starling::version::COMMIT
    );
    assert!(metrics.contains(&info), "{metrics}");
}
