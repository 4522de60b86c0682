//! The service manager's readiness protocol (systemd's `sd_notify`): one datagram per state
//! change to the Unix socket named by `$NOTIFY_SOCKET` (`READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`), and the watchdog interval from
//! `$WATCHDOG_USEC`. Without `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`)
//! every call does nothing. Written on `std` alone: no C library, no unsafe code.

use std::ffi::OsStr;
use std::io;
#[cfg(unix)]
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Why the service manager could not be told.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` names neither an absolute path nor an abstract socket (`@name`).
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract socket (@name)")]
    Address(String),
    /// The socket could not be created or the datagram not sent.
    #[error("cannot notify the service manager at {addr}: {source}")]
    Send {
        /// `$NOTIFY_SOCKET` as given.
        addr: String,
        /// What the system said.
        source: io::Error,
    },
}

/// Where state changes go: the service manager's socket, or nowhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[cfg(unix)]
#[derive(Debug)]
struct Target {
    /// `$NOTIFY_SOCKET` as given, for messages.
    name: String,
    addr: SocketAddr,
    socket: UnixDatagram,
}

#[cfg(unix)]
impl Target {
    fn send(&self, state: &str) -> Result<(), NotifyError> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(drop)
            .map_err(|source| NotifyError::Send {
                addr: self.name.clone(),
                source,
            })
    }
}

/// No Unix sockets here: never enabled.
#[cfg(not(unix))]
#[derive(Debug)]
enum Target {}

#[cfg(not(unix))]
impl Target {
    fn send(&self, _state: &str) -> Result<(), NotifyError> {
        match *self {}
    }
}

impl Notifier {
    /// A notifier that tells no one.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// The notifier `$NOTIFY_SOCKET` asks for; disabled when it is unset or empty.
    pub fn from_env() -> Result<Self, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(s) if !s.is_empty() => Self::new(&s),
            _ => Ok(Self::disabled()),
        }
    }

    /// A notifier sending to `socket`: an absolute path, or `@name` for an abstract socket
    /// (Linux).
    #[cfg(unix)]
    pub fn new(socket: &OsStr) -> Result<Self, NotifyError> {
        let name = socket.to_string_lossy().into_owned();
        let addr = parse_address(socket).ok_or_else(|| NotifyError::Address(name.clone()))?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Send {
            addr: name.clone(),
            source,
        })?;
        Ok(Self {
            target: Some(Target { name, addr, socket }),
        })
    }

    /// A notifier sending to `socket`: never on a system without Unix sockets.
    #[cfg(not(unix))]
    pub fn new(socket: &OsStr) -> Result<Self, NotifyError> {
        Err(NotifyError::Address(socket.to_string_lossy().into_owned()))
    }

    /// Whether anything is listening (`$NOTIFY_SOCKET` was set).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state`: newline-separated `KEY=VALUE` assignments, e.g. `"READY=1"`.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        t.send(state)
    }

    /// The store is restored and every listener is open.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// A reload (SIGHUP) has begun; [`Notifier::ready`] ends it.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.send("RELOADING=1\nSTATUS=reloading")
    }

    /// Shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1\nSTATUS=shutting down")
    }

    /// The process is alive (the watchdog's keep-alive).
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }
}

/// A status text on one line (a newline would start another assignment).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `/path` or `@abstract-name`; anything else is refused.
#[cfg(unix)]
fn parse_address(socket: &OsStr) -> Option<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket).ok(),
        Some(b'@') => abstract_address(bytes.get(1..).filter(|n| !n.is_empty())?),
        _ => None,
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).ok()
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn abstract_address(_name: &[u8]) -> Option<SocketAddr> {
    None
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is set for this process
/// (`$WATCHDOG_PID` unset or equal to its id). `None`: no watchdog.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval_from_env`] on given values: `usec` is `$WATCHDOG_USEC`, `pid`
/// `$WATCHDOG_PID`, `me` this process's id.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    // At least a millisecond apart, whatever the manager asked.
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn listening() -> (tempfile::TempDir, UnixDatagram, OsString) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path.into_os_string())
    }

    #[test]
    fn each_state_is_one_datagram_on_the_socket() {
        let (_dir, socket, path) = listening();
        let n = Notifier::new(&path).unwrap();
        assert!(n.is_enabled());
        n.ready("listening on 127.0.0.1:1883\nand more").unwrap();
        assert_eq!(
            recv(&socket),
            "READY=1\nSTATUS=listening on 127.0.0.1:1883 and more"
        );
        n.reloading().unwrap();
        assert_eq!(recv(&socket), "RELOADING=1\nSTATUS=reloading");
        n.watchdog().unwrap();
        assert_eq!(recv(&socket), "WATCHDOG=1");
        n.stopping().unwrap();
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=shutting down");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_sockets_are_reached_by_at_names() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("starling-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        n.send("READY=1").unwrap();
        assert_eq!(recv(&socket), "READY=1");
    }

    #[test]
    fn relative_and_empty_addresses_are_refused() {
        for bad in ["notify", "./notify", "@", ""] {
            let e = Notifier::new(OsStr::new(bad)).unwrap_err();
            assert!(matches!(e, NotifyError::Address(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let n = Notifier::new(path.as_os_str()).unwrap();
        let e = n.ready("x").unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_succeeds() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready("x").unwrap();
        n.watchdog().unwrap();
    }

    #[test]
    fn the_watchdog_pings_at_half_the_interval_for_this_process_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("-5"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(
            watchdog_interval(Some("1"), None, 7),
            Some(Duration::from_millis(1))
        );
    }
}
