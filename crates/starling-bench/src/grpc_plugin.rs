//! A minimal gRPC plugin (the service of `proto/starling/plugin/v1/plugin.proto`) for the
//! benchmark of a broker with a gRPC plugin on every message: it asks for `message.publish`
//! only and passes every message at once, so what is measured is the broker's side of a call
//! (a Python plugin measures Python). It prints how many calls it has answered at each power
//! of two from 65,536, to show that the broker asks it.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tonic::{Request, Response, Status, Streaming};

/// The generated code of the broker's client and of this server.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#[path = "../../starling/src/plugin/grpc/pb.rs"]
mod pb;

use pb::plugin_server::{Plugin, PluginServer};

#[derive(Debug, Default)]
struct PassAll {
    calls: AtomicU64,
}

#[tonic::async_trait]
impl Plugin for PassAll {
    async fn describe(
        &self,
        _: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        Ok(Response::new(pb::DescribeResponse {
            events: vec![pb::Event::Publish as i32],
        }))
    }

    async fn on_connect(
        &self,
        _: Request<pb::ConnectRequest>,
    ) -> Result<Response<pb::ConnectResponse>, Status> {
        Ok(Response::new(pb::ConnectResponse {
            verdict: Some(pb::connect_response::Verdict::Accept(
                pb::connect_response::Accept {},
            )),
        }))
    }

    async fn on_publish(
        &self,
        _: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() && n >= 1 << 16 {
            eprintln!("grpc-plugin: {n} publishes");
        }
        Ok(Response::new(pb::PublishResponse {
            verdict: Some(pb::publish_response::Verdict::Pass(
                pb::publish_response::Pass {},
            )),
        }))
    }

    async fn on_subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::FilterResponse>, Status> {
        Ok(Response::new(pb::FilterResponse {
            verdict: Some(pb::filter_response::Verdict::Pass(
                pb::filter_response::Pass {},
            )),
        }))
    }

    async fn on_unsubscribe(
        &self,
        _: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::FilterResponse>, Status> {
        Ok(Response::new(pb::FilterResponse {
            verdict: Some(pb::filter_response::Verdict::Pass(
                pb::filter_response::Pass {},
            )),
        }))
    }

    async fn notify(
        &self,
        request: Request<Streaming<pb::Notification>>,
    ) -> Result<Response<pb::NotifyResponse>, Status> {
        let mut stream = request.into_inner();
        while stream.message().await?.is_some() {}
        Ok(Response::new(pb::NotifyResponse {}))
    }
}

/// Serves on `addr` until the process is killed.
pub(crate) async fn serve(addr: &str) -> Result<()> {
    let addr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    eprintln!("grpc-plugin: listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(PluginServer::new(PassAll::default()))
        .serve(addr)
        .await
        .context("the gRPC server failed")
}
