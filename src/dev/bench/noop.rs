//! A no-op ext_authz server: the same tonic stack as quay-authz's gRPC listener (one
//! `tonic::transport::Server`, TCP_NODELAY on accepted connections) answering every Check with
//! OK at once. What it sustains is the transport's limit, the baseline for quay-authz.
//!
//! Usage: `noop::serve(listener, shutdown).await?` with a bound `tokio::net::TcpListener`.

use std::future::Future;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

struct NoopAuthorization;

#[tonic::async_trait]
impl Authorization for NoopAuthorization {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(NoopAuthorization))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
