//! `starling passwd -H scram-sha-256`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_writes_scram_entries_the_broker_uses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("passwd")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let f = file.to_str().unwrap();
    let out = run(&["-c", "-b", "-H", "scram-sha-256", f, "dora", "explorer"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["-b", "-H", "scram-sha-256", "-I", "5000", f, "eve", "e"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["-b", f, "frank", "f"]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("dora:$scram-sha-256$4096$"), "{text}");
    assert!(text.contains("\neve:$scram-sha-256$5000$"), "{text}");
    assert!(
        text.contains("\nfrank:$argon2id$"),
        "argon2id stays the default: {text}"
    );
    let out = run(&["-b", "-H", "scram-sha-1", f, "x", "y"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scram-sha-256"));

    let mut config = Config {
        listeners: vec![scram_listener(&file, None)],
        ..Config::default()
    };
    config.limits.sys_interval_secs = 0;
    config.http.bind = ([127, 0, 0, 1], 0).into();
    let server = common::start_server_with(&config).await;
    scram_login(server.addr, "dora", ("dora", "explorer")).await;
    let (_, ack, _) = scram_connect(server.addr, "dora-2", ("dora", "Explorer")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_password_file_applies_to_the_next_exchange() {
    let f = fixture(|_| {}).await;
    scram_login(f.server.addr, "before", ALICE).await;
    let mut file = PasswordFile::load(&f.passwd).unwrap();
    file.set(
        "alice",
        PasswordHash::new(b"new password", HashKind::ScramSha256 { iterations: 4096 }).unwrap(),
    )
    .unwrap();
    file.save(&f.passwd).unwrap();
    assert!(f.server.reload().is_empty());
    let (_, ack, _) = scram_connect(f.server.addr, "old", ALICE).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    scram_login(f.server.addr, "new", ("alice", "new password")).await;
    f.server.shutdown().await;
}
