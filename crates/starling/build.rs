//! Build script: the git commit the binary is built from, for `starling --version` and the
//! `starling_build_info` metric, as the `STARLING_GIT_COMMIT` compile-time variable: the short
//! hash, with `-dirty` when tracked files differed from it, or `unknown` outside a git
//! checkout (a Docker build context without `.git`). A `STARLING_GIT_COMMIT` set in the
//! build's environment wins (the Dockerfile passes its build argument that way).
//!
//! It runs again when HEAD moves (`.git/HEAD`, the branch's ref, `packed-refs`) or a source
//! file of the workspace changes (which rebuilds this crate anyway), not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=STARLING_GIT_COMMIT");
    let given = std::env::var("STARLING_GIT_COMMIT").unwrap_or_default();
    let commit = if given.trim().is_empty() {
        from_git().unwrap_or_else(|| "unknown".to_owned())
    } else {
        given.trim().to_owned()
    };
    let commit = sanitize(&commit);
    println!("cargo:rustc-env=STARLING_GIT_COMMIT={commit}");
}

/// Letters, digits, `.`, `-`, `_` and `+` only, at most 64 of them; else `unknown`.
fn sanitize(s: &str) -> String {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
    if ok {
        s.to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// `git` in the crate's directory, without taking the index lock (another git command may
/// hold it); `None` if git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn from_git() -> Option<String> {
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    // Relative to the directory git ran in (the crate's), when git prints it relative.
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let common = git(&["rev-parse", "--git-common-dir"])
        .map(|d| crate_dir.join(d))
        .unwrap_or_else(|| git_dir.clone());
    watch(&git_dir.join("HEAD"));
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
        && let Some(r) = head.trim().strip_prefix("ref: ")
    {
        watch(&common.join(r));
    }
    watch(&common.join("packed-refs"));
    watch_sources();
    let hash = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// Reruns when `path` changes; only existing paths (cargo reruns every time for a missing
/// one).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The crates this binary is built from, whose `src` directories are watched.
const CRATES: [&str; 5] = [
    "starling",
    "starling-proto",
    "starling-broker",
    "starling-store",
    "starling-auth",
];

/// The `src` directories of [`CRATES`], so that the dirty marker follows edits that rebuild
/// this crate anyway (tests, benchmarks and other crates do not rebuild it and are left out).
fn watch_sources() {
    let Some(crates) = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|d| d.parent().map(Path::to_path_buf))
    else {
        return;
    };
    for name in CRATES {
        watch(&crates.join(name).join("src"));
    }
}
