//! The admin API (`proto/quay_authz/admin/v1/admin.proto`), served on the loopback-only admin
//! listener: `Status` reports every issuer's key sources,
//! `Explain` narrates the decision for one request with the live configuration and keys.

use std::sync::Arc;

use crate::authn::extract::RequestFacts;
use crate::check::explain::{Explanation, explain};
use crate::model::clock::unix_now;
use crate::server::Service;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("quay_authz.admin.v1");
}

use proto::admin_server::Admin;
use proto::{
    ExplainRequest, ExplainResponse, ExplainStep, KeySourceStatus, StatusRequest, StatusResponse,
};

pub struct AdminService {
    pub service: Arc<Service>,
}

impl AdminService {
    pub fn status(&self) -> StatusResponse {
        let pipeline = self.service.pipeline.load();
        let required: Vec<&str> = pipeline
            .config
            .issuers
            .iter()
            .filter(|issuer| issuer.required)
            .map(|issuer| issuer.name.as_str())
            .collect();
        let key_sources = pipeline
            .key_sources()
            .map(|(issuer, source)| {
                let status = source.status();
                let current = source.current();
                KeySourceStatus {
                    issuer: issuer.to_string(),
                    url: source.config.location.url().to_string(),
                    required: required.contains(&issuer),
                    key_ids: current
                        .as_ref()
                        .map(|set| {
                            set.keys
                                .iter()
                                .map(|key| key.key_id.clone().unwrap_or_default())
                                .collect()
                        })
                        .unwrap_or_default(),
                    key_set_age_seconds: current
                        .as_ref()
                        .map(|set| set.fetched_at.elapsed().as_secs()),
                    last_error: status.last_error.unwrap_or_default(),
                    fetches: status.fetches,
                }
            })
            .collect();
        StatusResponse {
            ready: pipeline.ready(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            key_sources,
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(AdminService::status(self)))
    }

    async fn explain(
        &self,
        request: tonic::Request<ExplainRequest>,
    ) -> Result<tonic::Response<ExplainResponse>, tonic::Status> {
        let request = request.into_inner();
        let facts = RequestFacts::described(
            request.method,
            request.path,
            Some(request.token),
            Some(request.body),
        );
        let pipeline = self.service.pipeline.load_full();
        Ok(tonic::Response::new(to_proto(
            explain(&pipeline, &facts, unix_now()).await,
        )))
    }
}

pub fn to_proto(explanation: Explanation) -> ExplainResponse {
    ExplainResponse {
        decision: explanation.decision,
        reason: explanation.reason,
        http_status: explanation.http_status,
        steps: explanation
            .steps
            .into_iter()
            .map(|step| ExplainStep {
                phase: step.phase,
                result: step.result,
            })
            .collect(),
    }
}

/// The admin API's answer back into the report `explain` prints (`explain --server`).
impl From<proto::ExplainResponse> for Explanation {
    fn from(response: proto::ExplainResponse) -> Self {
        Self {
            decision: response.decision,
            reason: response.reason,
            http_status: response.http_status,
            steps: response
                .steps
                .into_iter()
                .map(|step| crate::check::explain::Step {
                    phase: step.phase,
                    result: step.result,
                })
                .collect(),
        }
    }
}
