//! A no-op ext_authz server: the same tonic stack as quay-authz's gRPC listener (one
//! `tonic::transport::Server`, TCP_NODELAY on accepted connections) answering every Check with
//! OK at once. What it sustains is the transport's limit, the baseline for quay-authz.
//!
//! It answers either an empty OK ([`Answer::Empty`], what any ext_authz server could reach) or
//! the OK quay-authz gives an allowed Check ([`Answer::LikeQuayAuthz`]: its identity headers,
//! `headers_to_remove` and dynamic metadata, built by `check::respond` itself): the transport's
//! cost of quay-authz's answer, without the decision.
//!
//! Usage: `noop::serve(listener, Answer::Empty, shutdown).await?` with a bound
//! `tokio::net::TcpListener`.

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::check::respond::{ResponseSettings, build_response};
use crate::config::HeaderSettings;
use crate::model::decision::{Decision, ScopeRewrite, UpstreamCredential};
use crate::model::identity::Identity;
use crate::model::permission::{Grant, Granted};

/// What every Check is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answer {
    /// OK with nothing else.
    #[default]
    Empty,
    /// OK as quay-authz allows a request of the development issuer's token (`quay-authz
    /// dev-issuer`'s `allowed.token` under the quickstart configuration): user, issuer, groups
    /// and scopes headers, the others removed, and the decision's dynamic metadata.
    LikeQuayAuthz,
}

impl Answer {
    /// The response, built once; each Check answers a copy of it, as quay-authz builds one.
    pub fn response(self) -> CheckResponse {
        match self {
            Self::Empty => CheckResponse {
                status: Some(Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
                dynamic_metadata: None,
            },
            Self::LikeQuayAuthz => {
                let identity = Identity {
                    issuer: "dev".into(),
                    iss: "http://127.0.0.1:9000".into(),
                    username: "dev-user".into(),
                    tenant: None,
                    client: None,
                    audiences: Default::default(),
                    groups: Arc::from([Arc::from("acme-developers")]),
                    claims: Default::default(),
                    expires_at: 0,
                    bridge_subject: None,
                    exchanged: None,
                };
                let decision = Decision::Allow {
                    identity: Arc::new(identity),
                    grants: Granted::new(Grant::parse("repo:write on acme/*").unwrap_or_default()),
                    rules: vec!["acme-developers".into()],
                    required: Vec::new(),
                    upstream: UpstreamCredential::Forward,
                    scopes: ScopeRewrite::Unchanged,
                };
                let settings = ResponseSettings::new(
                    HeaderSettings {
                        prefix: "x-quay-authz-".into(),
                        remove_authorization: false,
                    },
                    "http://127.0.0.1:8080/v2/auth".into(),
                    "quay.example.com".into(),
                );
                build_response(&decision, &settings, false)
            }
        }
    }
}

struct NoopAuthorization {
    answer: CheckResponse,
}

#[tonic::async_trait]
impl Authorization for NoopAuthorization {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.answer.clone()))
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    answer: Answer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(NoopAuthorization {
            answer: answer.response(),
        }))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
