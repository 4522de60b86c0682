//! `starling health [URL]`: asks a broker's HTTP listener whether it is alive (`/healthz`
//! by default) and exits 0 on a 2xx answer, 1 otherwise. For container health checks in an
//! image that has no curl. Plain `http://` only: an HTTPS listener needs another client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What `starling health` asks when given no URL: the default HTTP listener's liveness check.
pub const DEFAULT_URL: &str = "http://127.0.0.1:18080/healthz";

/// Longest status line read.
const MAX_STATUS_LINE: u64 = 1024;

/// `starling health`'s arguments.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The URL to ask (`http://HOST:PORT/PATH`); `/readyz` tells whether the broker is ready.
    #[arg(default_value = DEFAULT_URL, value_name = "URL")]
    pub url: String,
    /// Seconds allowed to connect and to get the answer.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Why the broker was not found healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Not an `http://HOST[:PORT][/PATH]` URL.
    #[error("{0:?} is not an http://HOST[:PORT][/PATH] URL")]
    Url(String),
    /// The host did not resolve to any address.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Connecting, sending or reading failed.
    #[error("{url}: {source}")]
    Io {
        /// The URL asked.
        url: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The answer was not an HTTP status line.
    #[error("{url}: not an HTTP answer: {line:?}")]
    NotHttp {
        /// The URL asked.
        url: String,
        /// What came back.
        line: String,
    },
    /// An HTTP status other than 2xx.
    #[error("{url}: {line}")]
    Unhealthy {
        /// The URL asked.
        url: String,
        /// The status line.
        line: String,
    },
}

/// Asks `url` and returns its status line when the status is 2xx.
pub fn check(url: &str, timeout: Duration) -> Result<String, HealthError> {
    let (authority, path) = split_url(url).ok_or_else(|| HealthError::Url(url.to_owned()))?;
    let addrs = resolve(authority)?;
    let io = |source| HealthError::Io {
        url: url.to_owned(),
        source,
    };
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(io(e)),
        (None, None) => return Err(HealthError::Resolve(authority.to_owned())),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: starling-health\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_STATUS_LINE))
        .read_line(&mut line)
        .map_err(io)?;
    let line = line.trim_end().to_owned();
    let mut parts = line.split(' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => {
            code.parse::<u16>().ok()
        }
        _ => None,
    };
    match status {
        Some(200..=299) => Ok(line),
        Some(_) => Err(HealthError::Unhealthy {
            url: url.to_owned(),
            line,
        }),
        None => Err(HealthError::NotHttp {
            url: url.to_owned(),
            line,
        }),
    }
}

/// `http://AUTHORITY/PATH` as (authority, path); the path defaults to `/`.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let clean = |s: &str| !s.is_empty() && !s.bytes().any(|b| b.is_ascii_whitespace());
    (clean(authority) && clean(path) && !authority.contains('@')).then_some((authority, path))
}

/// `host[:port]` or `[v6][:port]`, port 80 when absent.
fn resolve(authority: &str) -> Result<Vec<SocketAddr>, HealthError> {
    let has_port = match authority.rfind(']') {
        Some(close) => authority
            .get(close + 1..)
            .is_some_and(|r| r.starts_with(':')),
        None => authority.contains(':'),
    };
    let target = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|_| HealthError::Resolve(authority.to_owned()))?
        .collect();
    if addrs.is_empty() {
        return Err(HealthError::Resolve(authority.to_owned()));
    }
    Ok(addrs)
}

/// `starling health`: prints the status line and succeeds on 2xx; fails otherwise.
pub fn run(args: HealthArgs) -> anyhow::Result<()> {
    let line = check(&args.url, Duration::from_secs(args.timeout.max(1)))?;
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection with `answer` and returns the request it read.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (url, t)
    }

    #[test]
    fn a_2xx_answer_is_healthy_and_the_request_names_path_and_host() {
        let (url, t) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(
            check(&url, Duration::from_secs(5)).unwrap(),
            "HTTP/1.1 200 OK"
        );
        let request = t.join().unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nHost: 127.0.0.1:"), "{request}");
    }

    #[test]
    fn other_statuses_and_garbage_are_unhealthy() {
        let (url, t) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let e = check(&url, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, HealthError::Unhealthy { .. }), "{e}");
        assert!(e.to_string().contains("503"), "{e}");
        t.join().unwrap();
        let (url, t) = serve_once("SSH-2.0-OpenSSH\r\n");
        let e = check(&url, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, HealthError::NotHttp { .. }), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn a_closed_port_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = check(
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(e, HealthError::Io { .. }), "{e}");
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            split_url("http://127.0.0.1:18080/healthz"),
            Some(("127.0.0.1:18080", "/healthz"))
        );
        assert_eq!(split_url("http://[::1]:80"), Some(("[::1]:80", "/")));
        for bad in [
            "https://127.0.0.1/",
            "127.0.0.1:18080",
            "http:///x",
            "http://a b/",
            "http://u@h/",
        ] {
            assert!(split_url(bad).is_none(), "{bad}");
            assert!(matches!(
                check(bad, Duration::from_secs(1)),
                Err(HealthError::Url(_))
            ));
        }
        assert_eq!(resolve("127.0.0.1").unwrap()[0].port(), 80);
        assert_eq!(resolve("[::1]:9").unwrap()[0].port(), 9);
    }
}
