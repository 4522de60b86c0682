//! Deployment, black box: the broker binary as systemd, Docker and Debian run it. Readiness
//! and watchdog notifications on a real `$NOTIFY_SOCKET`, SIGTERM (MQTT 5 clients told 0x8B,
//! the store flushed, the exit within its bound) and a second SIGTERM, `--version`, the
//! manual page, completions, `starling health`, and the packaging files: the systemd unit
//! (`systemd-analyze verify`), the configs shipped for Debian and Docker, the Dockerfile and
//! the `cargo deb` definition.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../common/mod.rs"]
mod common;
mod notify;
mod packaging;
mod process;
mod shutdown;
