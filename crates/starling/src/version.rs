//! What this binary is: the crate's version and the git commit it was built from (set by
//! `build.rs`; `unknown` when built outside a git checkout without `STARLING_GIT_COMMIT`).

/// The crate's version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit, e.g. `1a2b3c4`, `1a2b3c4-dirty` or `unknown`.
pub const COMMIT: &str = env!("STARLING_GIT_COMMIT");

/// `starling --version`'s text after the name: `0.1.0 (commit 1a2b3c4)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STARLING_GIT_COMMIT"),
    ")"
);
