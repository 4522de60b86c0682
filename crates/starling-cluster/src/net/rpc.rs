//! The gRPC service nodes call on each other: `starling.cluster.v1.Cluster` in
//! `proto/starling/cluster/v1/cluster.proto`, one unary method per request [`Kind`]. gRPC on
//! HTTP/2 (the `h2` crate), with gRPC's framing done here (a message is `0 | length (u32,
//! big-endian) | bytes`; the outcome is the `grpc-status` trailer, tonic's [`Status`]) and the
//! messages converted by [`crate::wire`]. A call is driven by the task that makes it, and a
//! peer's calls by the task that serves its connection: no task per call and no hop between
//! tasks on the way (docs/cluster.md says why). Everything a peer sends is bounded here: a
//! message at most [`MAX_MESSAGE`] (checked from its length prefix before it is read), four
//! calls at once per connection, 16 KiB of headers; no compression is accepted.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use tonic::{Code, Status};

/// The service's name, as in the proto file; a new incompatible version is a new package.
pub const SERVICE: &str = "starling.cluster.v1.Cluster";

/// The largest message either side sends or accepts (a request carries at most one snapshot
/// chunk, one batch of entries or of forwarded messages; an answer at most a handover part).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Calls a peer may have open at once on one connection (every link makes one at a time).
const MAX_STREAMS: u32 = 4;

/// HTTP/2 flow-control windows: large enough that a batch of a few MiB is not held up by
/// window updates on a fast link, small enough to bound what one connection buffers.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// HTTP/2 frames of up to 256 KiB (the default 16 KiB cuts a large batch into many).
const FRAME_SIZE: u32 = 256 * 1024;

/// Request headers a peer may send (a call has a handful).
const MAX_HEADERS: u32 = 16 * 1024;

/// gRPC's content type.
const GRPC: &str = "application/grpc";

/// What a call asks: one method of the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// openraft's AppendEntries request.
    AppendEntries,
    /// openraft's RequestVote request.
    Vote,
    /// A chunk of a snapshot.
    InstallSnapshot,
    /// A command for the leader to commit (from a node that is not the leader).
    Propose,
    /// A node's filters, as a snapshot or a delta ([`crate::routes::Update`]).
    Routes,
    /// Messages for the receiver's subscribers ([`crate::net::Forward`]).
    Forward,
    /// A request for a session whose client id the sender now owns ([`crate::net::Handover`]).
    Handover,
    /// A change of the members, for the leader ([`crate::members::Change`]).
    Members,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::AppendEntries,
        Kind::Vote,
        Kind::InstallSnapshot,
        Kind::Propose,
        Kind::Routes,
        Kind::Forward,
        Kind::Handover,
        Kind::Members,
    ];

    /// The HTTP/2 path of the method: `/starling.cluster.v1.Cluster/<method>` (static: no
    /// allocation per call).
    pub fn path(self) -> &'static str {
        match self {
            Kind::AppendEntries => "/starling.cluster.v1.Cluster/AppendEntries",
            Kind::Vote => "/starling.cluster.v1.Cluster/Vote",
            Kind::InstallSnapshot => "/starling.cluster.v1.Cluster/InstallSnapshot",
            Kind::Propose => "/starling.cluster.v1.Cluster/Propose",
            Kind::Routes => "/starling.cluster.v1.Cluster/Routes",
            Kind::Forward => "/starling.cluster.v1.Cluster/Forward",
            Kind::Handover => "/starling.cluster.v1.Cluster/Handover",
            Kind::Members => "/starling.cluster.v1.Cluster/ChangeMembers",
        }
    }

    /// The method's name in the proto file.
    pub fn method(self) -> &'static str {
        let path = self.path();
        path.rsplit_once('/').map_or(path, |(_, m)| m)
    }

    /// The method a request's path names, if any.
    pub fn from_path(path: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.path() == path)
    }
}

/// The HTTP/2 settings of a connection a node opens to a peer.
pub fn client() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .max_header_list_size(MAX_HEADERS)
        .enable_push(false);
    b
}

/// The HTTP/2 settings of a connection a node accepts from a peer.
pub fn server() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .max_header_list_size(MAX_HEADERS)
        .max_concurrent_streams(MAX_STREAMS);
    b
}

/// The head of a call of `kind` on the peer at `addr` (`host:port`).
pub fn request(kind: Kind, addr: &str) -> Request<()> {
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(addr)
        .path_and_query(PathAndQuery::from_static(kind.path()))
        .build()
        .or_else(|_| {
            http::Uri::builder()
                .scheme("http")
                .authority("peer")
                .path_and_query(PathAndQuery::from_static(kind.path()))
                .build()
        })
        .unwrap_or_default();
    let mut req = Request::new(());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(GRPC));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    req
}

/// The head of an answer whose message follows.
pub fn response() -> Response<()> {
    let mut r = Response::new(());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(GRPC));
    r
}

/// The head of an answer that is only its status (gRPC's "trailers-only" answer).
pub fn failure(status: &Status) -> Response<()> {
    let mut r = response();
    if status.add_header(r.headers_mut()).is_err() {
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from(Code::Internal as i32));
    }
    r
}

/// The trailers of an answer that succeeded.
pub fn ok_trailers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from(Code::Ok as i32));
    h
}

/// A message as gRPC frames it: not compressed, its length, its bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    b.put_slice(message);
    b.freeze()
}

/// Whether a request's head is a gRPC call (`content-type: application/grpc[+proto]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == GRPC || v.starts_with("application/grpc+"))
}

/// Reads the one message of a call's body (or of its answer's) from `body`, bounded by
/// [`MAX_MESSAGE`] and giving the window back as it reads. A second message, a compressed
/// one, or a body that ends inside its message is refused.
pub async fn read_message(body: &mut h2::RecvStream) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    let mut want: Option<usize> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| Status::unavailable(e.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        if want.is_none()
            && let Some(&[flag, a, b, c, d]) = buf.first_chunk::<5>()
        {
            if flag != 0 {
                return Err(Status::unimplemented(
                    "compressed messages are not accepted",
                ));
            }
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len > MAX_MESSAGE {
                return Err(Status::out_of_range(format!(
                    "a message of {len} bytes; at most {MAX_MESSAGE}"
                )));
            }
            buf.reserve(len);
            want = Some(len);
        }
        if let Some(len) = want
            && buf.len() > 5 + len
        {
            return Err(Status::invalid_argument(
                "more than one message in a unary call",
            ));
        }
    }
    match want {
        Some(len) if buf.len() == 5 + len => {
            buf.advance(5);
            Ok(buf.freeze())
        }
        _ => Err(Status::invalid_argument("the message ended early")),
    }
}

/// The status an answer's head or trailers carry (`None`: neither says).
pub fn status_of(headers: &HeaderMap) -> Option<Status> {
    Status::from_header_map(headers)
}

/// Whether an answer's head says it is a gRPC answer at all.
pub fn answered(status: StatusCode, headers: &HeaderMap) -> Result<(), Status> {
    if status != StatusCode::OK {
        return Err(Status::unknown(format!("HTTP status {status}")));
    }
    if !is_grpc(headers) {
        return Err(Status::unknown("not a gRPC answer"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_own_path_and_is_found_by_it() {
        for k in Kind::ALL {
            let path = k.path();
            assert_eq!(path, format!("/{SERVICE}/{}", k.method()));
            assert_eq!(Kind::from_path(path), Some(k));
        }
        for bad in [
            "/",
            "",
            "/starling.cluster.v1.Cluster/",
            "/starling.cluster.v1.Cluster/Nope",
            "/starling.cluster.v2.Cluster/Vote",
            "/starling.cluster.v1.ClusterVote",
            "starling.cluster.v1.Cluster/Vote",
        ] {
            assert_eq!(Kind::from_path(bad), None, "{bad}");
        }
    }
}
