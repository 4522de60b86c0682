//! The gRPC service nodes call on each other: `starling.cluster.v1.Cluster` in
//! `proto/starling/cluster/v1/cluster.proto`, one unary method per request [`Kind`], over
//! HTTP/2 (hyper) with tonic's gRPC framing. The messages are converted by [`crate::wire`]
//! ([`Raw`] is the codec that hands tonic their bytes), so the service needs no generated
//! client or server. Everything a peer sends is bounded here: a message at most
//! [`MAX_MESSAGE`], four calls at once per connection, 16 KiB of headers.

use std::marker::PhantomData;

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use hyper_util::rt::TokioExecutor;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tracing::debug;

use crate::wire::Wire;

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

    /// The method's name in the proto file.
    pub fn method(self) -> &'static str {
        match self {
            Kind::AppendEntries => "AppendEntries",
            Kind::Vote => "Vote",
            Kind::InstallSnapshot => "InstallSnapshot",
            Kind::Propose => "Propose",
            Kind::Routes => "Routes",
            Kind::Forward => "Forward",
            Kind::Handover => "Handover",
            Kind::Members => "ChangeMembers",
        }
    }

    /// The HTTP/2 path of the method: `/starling.cluster.v1.Cluster/<method>`.
    pub fn path(self) -> PathAndQuery {
        PathAndQuery::from_maybe_shared(format!("/{SERVICE}/{}", self.method()))
            .unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }

    /// The method a request's path names, if any.
    pub fn from_path(path: &str) -> Option<Kind> {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(SERVICE)?
            .strip_prefix('/')?;
        Kind::ALL.into_iter().find(|k| k.method() == method)
    }
}

/// The HTTP/2 settings of a connection a node opens to a peer.
pub fn client() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .max_header_list_size(MAX_HEADERS);
    b
}

/// The HTTP/2 settings of a connection a node accepts from a peer. No `date` header (a
/// reply's bytes do not depend on the clock, which keeps the simulation deterministic).
pub fn server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .max_header_list_size(MAX_HEADERS)
        .max_concurrent_streams(MAX_STREAMS)
        .auto_date_header(false);
    b
}

/// The codec of a call: what is sent is already encoded ([`Wire::to_wire`]); what comes
/// back is read as `D`, and refused (a gRPC `INVALID_ARGUMENT`) if it does not decode.
#[derive(Debug)]
pub struct Raw<D>(PhantomData<fn() -> D>);

impl<D> Default for Raw<D> {
    fn default() -> Self {
        Raw(PhantomData)
    }
}

impl<D: Wire + Send + 'static> Codec for Raw<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = AsIs;
    type Decoder = Raw<D>;

    fn encoder(&mut self) -> AsIs {
        AsIs
    }

    fn decoder(&mut self) -> Raw<D> {
        Raw::default()
    }
}

/// Writes a message's bytes as they are.
#[derive(Debug)]
pub struct AsIs;

impl Encoder for AsIs {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: Wire> Decoder for Raw<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        match D::from_wire(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                debug!(error = %e, what = std::any::type_name::<D>(), "cluster message does not decode");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_own_path_and_is_found_by_it() {
        for k in Kind::ALL {
            let path = k.path();
            assert!(path.as_str().starts_with("/starling.cluster.v1.Cluster/"));
            assert_eq!(Kind::from_path(path.as_str()), Some(k));
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
