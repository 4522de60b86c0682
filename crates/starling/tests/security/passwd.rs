//! `starling passwd` writes files the broker accepts.

use super::*;

fn passwd(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_command_writes_files_the_broker_accepts() {
    let dir = TempDir::new("passwd-cli");
    let file = dir.path("passwd");
    let f = file.to_str().unwrap();
    let out = passwd(&["-b", f, "alice", "pw"], None);
    assert!(!out.status.success(), "no -c and no file");
    assert!(
        passwd(&["-c", "-b", f, "alice", "s3cret"], None)
            .status
            .success()
    );
    assert!(passwd(&[f, "bob"], Some("from stdin\n")).status.success());
    assert!(
        passwd(&["-H", "sha512-pbkdf2", "-b", f, "carol", "c"], None)
            .status
            .success()
    );
    assert!(passwd(&["-b", f, "dave", "d"], None).status.success());
    assert!(passwd(&["-D", f, "dave"], None).status.success());
    let out = passwd(&["-D", f, "dave"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dave"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    assert!(text.contains("\ncarol:$7$1000$"), "{text}");
    assert!(!text.contains("dave"));

    let mut l = listener("tcp");
    l.password_file = Some(file.clone());
    l.allow_anonymous = Some(false);
    let s = start(vec![l]).await;
    ok_client(s.addr, login(V5, "a", Some("alice"), Some("s3cret"))).await;
    ok_client(s.addr, login(V311, "b", Some("bob"), Some("from stdin"))).await;
    ok_client(s.addr, login(V5, "c", Some("carol"), Some("c"))).await;
    expect_refused(
        s.addr,
        login(V5, "d", Some("dave"), Some("d")),
        ReasonCode::BadUserNameOrPassword,
    )
    .await;
    s.shutdown().await;
}
