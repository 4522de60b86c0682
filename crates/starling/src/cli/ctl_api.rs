//! The admin API's HTTP client for `starling ctl`: the URL taken apart, the credentials, one
//! request and its JSON answer (bounded in time and size), listings followed page by page,
//! and the percent-encoding of path segments and query values.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::{
    CtlArgs, CtlError, MAX_ANSWER, MAX_PAGES, Paging, REQUEST_TIMEOUT, print_object, print_table,
};

/// Percent-encodes one path segment or query value.
pub(super) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub(super) struct Api<'a> {
    pub(super) args: &'a CtlArgs,
    tls: bool,
    host: String,
    port: u16,
    base_path: String,
}

impl<'a> Api<'a> {
    pub(super) fn new(args: &'a CtlArgs) -> Result<Self, CtlError> {
        let bad = || CtlError::Url(args.url.clone());
        let (tls, rest) = if let Some(r) = args.url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = args.url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse().map_err(|_| bad())?,
            ),
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            args,
            tls,
            host,
            port,
            base_path: if path == "/" { String::new() } else { path },
        })
    }

    pub(super) fn authorization(&self) -> Option<String> {
        let key = self
            .args
            .api_key
            .clone()
            .or_else(|| std::env::var("STARLING_API_KEY").ok());
        if let Some(k) = key {
            return Some(format!("Bearer {k}"));
        }
        let user = self.args.username.as_ref()?;
        let pass = self.args.password.clone().unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Some(format!("Basic {token}"))
    }

    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(CtlError::Timeout),
        }
    }

    pub(super) async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        let url = self.args.url.clone();
        let connect_err = |cause: String| CtlError::Connect {
            url: url.clone(),
            cause,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect_err(crate::cli::net::io_message(&e)))?;
        let stream: Box<dyn crate::cli::net::Stream> = if self.tls {
            let config = crate::cli::net::https_config(self.args.cafile.as_deref())
                .map_err(|e| connect_err(e.to_string()))?;
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|_| CtlError::Url(url.clone()))?;
            let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| connect_err(format!("TLS: {}", crate::cli::net::io_message(&e))))?;
            Box::new(s)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/api/v1{path}", self.base_path))
            .header(HOST, format!("{}:{}", self.host, self.port));
        if let Some(auth) = self.authorization() {
            req = req.header(AUTHORIZATION, auth);
        }
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?
            .to_bytes();
        driver.abort();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let code = value.get("code").and_then(Value::as_str).unwrap_or("error");
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_string);
            Err(CtlError::Api {
                status: status.as_u16(),
                message: format!("{code}: {message}"),
            })
        }
    }

    /// A listing, page by page (all pages with `--all`), printed as it comes.
    pub(super) async fn list(
        &self,
        path: &str,
        mut pairs: Vec<(&str, Option<String>)>,
        paging: &Paging,
        columns: &[&str],
    ) -> Result<(), CtlError> {
        pairs.push(("limit", paging.limit.map(|l| l.to_string())));
        let mut after = paging.after.clone();
        let mut items = Vec::new();
        let mut next = None;
        for _ in 0..MAX_PAGES {
            let mut q = pairs.clone();
            q.push(("after", after.clone()));
            let page = self
                .call("GET", &format!("{path}{}", query(&q)), None)
                .await?;
            if let Some(list) = page.get("items").and_then(Value::as_array) {
                items.extend(list.iter().cloned());
            }
            next = page.get("next").and_then(Value::as_str).map(str::to_string);
            if !paging.all || next.is_none() {
                break;
            }
            after = next.clone();
        }
        if self.args.json {
            println!("{}", json!({ "items": items, "next": next }));
        } else {
            print_table(columns, &items);
            if let Some(n) = next {
                println!("(more: --after {n})");
            }
        }
        Ok(())
    }

    /// A listing without paging (`{"items": [...]}`), as a table or JSON.
    pub(super) async fn table(&self, path: &str, columns: &[&str]) -> Result<(), CtlError> {
        let v = self.call("GET", path, None).await?;
        if self.args.json {
            println!("{v}");
        } else {
            let items = v.get("items").and_then(Value::as_array);
            print_table(columns, items.map_or(&[][..], Vec::as_slice));
        }
        Ok(())
    }

    pub(super) fn show(&self, v: &Value) {
        if self.args.json {
            println!("{v}");
        } else {
            print_object(v, 0);
        }
    }

    pub(super) fn done(&self, what: &str) {
        if self.args.json {
            println!("{}", json!({ "ok": true }));
        } else {
            println!("{what}");
        }
    }
}
