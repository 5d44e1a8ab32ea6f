//! The admin API (`proto/quay_authz/admin/v1/admin.proto`), served on the loopback-only admin
//! listener: `Status` reports every issuer's key sources,
//! `Explain` narrates the decision for one request with the live configuration and keys,
//! `ListTokens`/`RevokeToken`/`RevokePrincipal` are exchanged tokens' lifecycle (README, "Token
//! lifecycle"): the admin listener is loopback-only, so reaching it is the authorisation.

use std::sync::Arc;

use crate::authn::extract::RequestFacts;
use crate::check::explain::{Explanation, explain};
use crate::model::clock::unix_now;
use crate::server::Service;
use crate::store::{IssuedToken, StoreError};

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("quay_authz.admin.v1");
}

use proto::admin_server::Admin;
use proto::{
    ExplainRequest, ExplainResponse, ExplainStep, KeySourceStatus, ListTokensRequest,
    ListTokensResponse, RevokePrincipalRequest, RevokePrincipalResponse, RevokeTokenRequest,
    RevokeTokenResponse, StatusRequest, StatusResponse,
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

    async fn list_tokens(
        &self,
        request: tonic::Request<ListTokensRequest>,
    ) -> Result<tonic::Response<ListTokensResponse>, tonic::Status> {
        let request = request.into_inner();
        let principal = optional_name("principal", &request.principal)?;
        let source_issuer = optional_name("source_issuer", &request.source_issuer)?;
        let store = &self.service.token_store;
        // Without a bridge nothing can have been exchanged: the (empty) store is not asked.
        let tokens = if self.service.pipeline.load().config.bridge.is_none() {
            Vec::new()
        } else {
            store.list(unix_now()).await.map_err(unavailable)?
        };
        let tokens = tokens
            .into_iter()
            .filter(|token| principal.is_none_or(|wanted| token.principal == wanted))
            .filter(|token| source_issuer.is_none_or(|wanted| token.source_issuer == wanted))
            .map(proto::IssuedToken::from)
            .collect();
        Ok(tonic::Response::new(ListTokensResponse {
            tokens,
            store: store.kind().to_string(),
        }))
    }

    async fn revoke_token(
        &self,
        request: tonic::Request<RevokeTokenRequest>,
    ) -> Result<tonic::Response<RevokeTokenResponse>, tonic::Status> {
        let peer = peer(&request);
        let jti = request.into_inner().jti;
        required_name("jti", &jti)?;
        self.revocable()?;
        let outcome = self.service.token_store.revoke(&jti, unix_now()).await;
        let revoked: Vec<IssuedToken> = match &outcome {
            Ok(token) => token.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let principal = revoked.first().map_or("", |token| token.principal.as_str());
        self.audit(
            RevocationKind::Jti,
            &jti,
            principal,
            &outcome,
            &revoked,
            &peer,
        );
        match outcome.map_err(unavailable)? {
            Some(token) => Ok(tonic::Response::new(RevokeTokenResponse {
                token: Some(token.into()),
            })),
            None => Err(tonic::Status::not_found(
                "no live exchanged token has this jti (expired, already revoked or never issued)",
            )),
        }
    }

    async fn revoke_principal(
        &self,
        request: tonic::Request<RevokePrincipalRequest>,
    ) -> Result<tonic::Response<RevokePrincipalResponse>, tonic::Status> {
        let peer = peer(&request);
        let principal = request.into_inner().principal;
        required_name("principal", &principal)?;
        let mark_lifetime = self.revocable()?;
        let now = unix_now();
        let outcome = self
            .service
            .token_store
            .revoke_principal(&principal, now, mark_lifetime)
            .await;
        let revoked = outcome.as_ref().cloned().unwrap_or_default();
        self.audit(
            RevocationKind::Principal,
            "",
            &principal,
            &outcome,
            &revoked,
            &peer,
        );
        let tokens = outcome.map_err(unavailable)?;
        Ok(tonic::Response::new(RevokePrincipalResponse {
            tokens: tokens.into_iter().map(proto::IssuedToken::from).collect(),
            revoked_before: now,
        }))
    }
}

// === Token lifecycle ===

/// The longest `jti` or principal the lifecycle calls accept, in bytes: far above what the
/// bridge issues (a `jti` is a UUID; a principal a rendered `subject` template), low enough
/// that a request cannot make a store key or an audit line of any size.
pub const MAX_NAME_BYTES: usize = 1024;

/// How long a principal's revocation mark lasts when `bridge.exchange` is off: the ceiling of
/// `max_lifetime_seconds` (config validation), so no token minted under any earlier
/// configuration outlives it.
const MARK_LIFETIME_WITHOUT_EXCHANGE: u64 = 3600;

#[derive(Clone, Copy)]
enum RevocationKind {
    Jti,
    Principal,
}

impl RevocationKind {
    fn label(self) -> &'static str {
        match self {
            Self::Jti => "jti",
            Self::Principal => "principal",
        }
    }
}

impl AdminService {
    /// Whether revocation applies to this configuration, and the lifetime of a principal's
    /// mark: `bridge.exchange.max_lifetime_seconds` (no token it allows lives longer).
    ///
    /// Without a `bridge` section no exchanged token can pass a Check (it is verified with the
    /// bridge's keys), so there is nothing to revoke: FAILED_PRECONDITION says why. A bridge
    /// without `exchange` still revokes: a reload that turns exchange off leaves the tokens
    /// minted before it live in the store until they expire.
    fn revocable(&self) -> Result<u64, tonic::Status> {
        let pipeline = self.service.pipeline.load();
        let Some(bridge) = pipeline.config.bridge.as_ref() else {
            return Err(tonic::Status::failed_precondition(
                "token exchange is not configured (no `bridge` section): there is nothing to revoke",
            ));
        };
        Ok(bridge
            .exchange
            .as_ref()
            .map_or(MARK_LIFETIME_WITHOUT_EXCHANGE, |exchange| {
                exchange.max_lifetime_seconds
            }))
    }

    /// One audit event per revocation request that reached the store (never a token: the
    /// store holds none), and the metric for those that revoked.
    fn audit<T>(
        &self,
        kind: RevocationKind,
        jti: &str,
        principal: &str,
        outcome: &Result<T, StoreError>,
        revoked: &[IssuedToken],
        peer: &str,
    ) {
        let result = match outcome {
            Err(_) => "store_unavailable",
            Ok(_) if matches!(kind, RevocationKind::Jti) && revoked.is_empty() => "not_found",
            Ok(_) => "revoked",
        };
        if result == "revoked" {
            self.service
                .metrics
                .token_revocations
                .with_label_values(&[kind.label()])
                .inc();
        }
        let mut source_issuers: Vec<&str> = revoked
            .iter()
            .map(|token| token.source_issuer.as_str())
            .collect();
        source_issuers.sort_unstable();
        source_issuers.dedup();
        tracing::info!(
            target: "audit",
            event = "token_revoke",
            kind = kind.label(),
            result,
            jti,
            principal,
            source_issuer = %source_issuers.join(","),
            count = revoked.len(),
            peer,
        );
    }
}

/// The admin client's address, for the audit event ("" when the transport does not say).
fn peer<T>(request: &tonic::Request<T>) -> String {
    request
        .remote_addr()
        .map(|address| address.to_string())
        .unwrap_or_default()
}

/// A `jti` or principal to act on: not empty, at most `MAX_NAME_BYTES`, no control characters
/// (it is written into audit lines and store keys).
fn required_name(field: &str, value: &str) -> Result<(), tonic::Status> {
    let problem = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_NAME_BYTES {
        "is longer than 1024 bytes"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(tonic::Status::invalid_argument(format!(
        "{field} {problem}"
    )))
}

/// A list filter: empty means none.
fn optional_name<'a>(field: &str, value: &'a str) -> Result<Option<&'a str>, tonic::Status> {
    if value.is_empty() {
        return Ok(None);
    }
    required_name(field, value)?;
    Ok(Some(value))
}

/// The store did not answer: UNAVAILABLE, naming the reason code. `StoreError`'s detail never
/// carries a URL or a password (its contract).
fn unavailable(error: StoreError) -> tonic::Status {
    tonic::Status::unavailable(format!("{}: {error}", error.reason().code()))
}

impl From<IssuedToken> for proto::IssuedToken {
    fn from(token: IssuedToken) -> Self {
        Self {
            jti: token.jti,
            principal: token.principal,
            username: token.username,
            source_issuer: token.source_issuer,
            scopes: token.scopes,
            issued_at: token.issued_at,
            expires_at: token.expires_at,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory store never fails, so the Redis store's failure is simulated here: the
    /// status an operator's CLI maps to "not possible now" names the reason code and what
    /// failed, and nothing else (`StoreError` carries no URL or password by contract).
    #[test]
    fn a_store_failure_is_unavailable_and_names_revocation_unavailable() {
        let status = unavailable(StoreError::new("connection refused"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.message(),
            "revocation_unavailable: token store unavailable: connection refused"
        );
    }
}
