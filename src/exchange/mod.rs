//! Token exchange (RFC 8693; README, "Token exchange"): an identity provider's JWT in, a
//! bridge token of our own issuer out, scoped to what today's policy grants and what was
//! asked. The subject token is verified by the Check's own code (`Pipeline::identify_token`),
//! the token is signed by the bridge's mint code (`Bridge::mint_exchanged`), and every
//! exchange, issued or refused, is one audit event and one count in
//! `quay_authz_token_exchanges_total`.
//!
//! Usage (`server` does this per `POST {bridge.exchange.path}`): check the transport
//! (method, content type, size, no other credential), `ExchangeRequest::parse` the body,
//! then `handle(pipeline, metrics, request, now)` gives the HTTP answer.

mod error;
mod request;

use std::sync::Arc;

pub use error::ExchangeError;
pub use request::{ExchangeRequest, GRANT_TYPE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};

use crate::bridge::Bridge;
use crate::check::pipeline::Pipeline;
use crate::config::bridge::ExchangeSettings;
use crate::config::raw::Upstream;
use crate::metrics::Metrics;
use crate::model::decision::Reason;
use crate::model::permission::{format_scope_list, intersect_grants};
use crate::store::{IssuedToken, MINT_WINDOW_SECONDS, mint_window};

/// The largest request body read (a subject token is bounded by `limits.max_token_bytes`,
/// far below this).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An HTTP answer of the endpoint: status, headers, JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// A token issued (RFC 8693 §2.2.1), with what the store records of it.
struct Issued {
    token: Arc<str>,
    record: IssuedToken,
}

/// What the audit event of one exchange says of the caller, filled in as it becomes known.
#[derive(Default)]
struct Facts {
    principal: String,
    username: String,
    source_issuer: String,
}

/// Runs one exchange (or records a refusal found by the transport checks: `request` is
/// then `Err`) and answers it: the audit event, the metric, the JSON.
pub async fn handle(
    pipeline: &Pipeline,
    metrics: &Metrics,
    request: Result<ExchangeRequest, ExchangeError>,
    now: u64,
) -> Answer {
    let mut facts = Facts::default();
    let result = match request {
        Ok(request) => exchange(pipeline, &request, now, &mut facts).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(issued) => {
            // The live-token gauge is set when /metrics is scraped: counting here would cost
            // every exchange a walk of the index (memory) or a round trip (Redis).
            metrics.token_exchanges.with_label_values(&["issued"]).inc();
            let record = &issued.record;
            // One audit event per exchange; never a token.
            tracing::info!(
                target: "audit",
                event = "token_exchange",
                result = "issued",
                principal = %record.principal,
                username = %record.username,
                source_issuer = %record.source_issuer,
                jti = %record.jti,
                scopes = %record.scopes.join(" "),
                expires_at = record.expires_at,
                lifetime = record.expires_at - record.issued_at,
            );
            success(&issued)
        }
        Err(error) => {
            metrics
                .token_exchanges
                .with_label_values(&[error.reason()])
                .inc();
            tracing::info!(
                target: "audit",
                event = "token_exchange",
                result = "refused",
                error = error.error(),
                reason = error.reason(),
                detail = %error.detail(),
                principal = %facts.principal,
                username = %facts.username,
                source_issuer = %facts.source_issuer,
            );
            refusal(&error)
        }
    }
}

/// The exchange itself, step by step.
async fn exchange(
    pipeline: &Pipeline,
    request: &ExchangeRequest,
    now: u64,
    facts: &mut Facts,
) -> Result<Issued, ExchangeError> {
    let (bridge, settings) = exchange_settings(pipeline).ok_or(ExchangeError::Unavailable {
        reason: Reason::KeysUnavailable,
        detail: "token exchange is not configured".into(),
    })?;
    // RFC 8693 §2.2.2: a target we do not issue for is `invalid_target`.
    if let Some(audience) = &request.audience
        && audience != &bridge.settings().audience
    {
        return Err(ExchangeError::InvalidTarget);
    }
    let lifetime = match request.requested_lifetime {
        Some(requested) if requested > settings.max_lifetime_seconds => {
            return Err(ExchangeError::LifetimeTooLong {
                max: settings.max_lifetime_seconds,
            });
        }
        Some(requested) => requested,
        None => settings.default_lifetime_seconds,
    };

    // The subject token, verified exactly as on a Check.
    let identity = pipeline
        .identify_token(&request.subject_token, now)
        .await
        .map_err(|error| refused_subject(error.reason, error.detail))?;
    facts.source_issuer = identity.issuer.clone();
    // No chaining: an exchanged token is re-scoped by exchanging the IdP token again, so
    // its lifetime and scope can never be stretched from a token of our own.
    if identity.exchanged.is_some() {
        return Err(ExchangeError::ExchangedTokenNotAccepted);
    }
    let config = &pipeline.config;
    let issuer = config
        .issuer(&identity.issuer)
        .filter(|issuer| issuer.upstream == Upstream::Exchange)
        .ok_or_else(|| ExchangeError::IssuerNotExchangeable {
            issuer: identity.issuer.clone(),
        })?;
    facts.principal = identity.bridge_subject.clone().unwrap_or_default();
    facts.username = identity.username.clone();

    let outcome = crate::policy::evaluate(&config.rules, &identity);
    let policy: Vec<_> = outcome.grants.into_iter().map(|(grant, _)| grant).collect();
    let granted = intersect_grants(request.scope.as_deref(), &policy);
    if granted.is_empty() {
        return Err(ExchangeError::NothingGranted);
    }

    // A leaked CI token cannot mint without bound: counted per principal per minute (in
    // the store, so shared by replicas with Redis).
    let unavailable = |error: crate::store::StoreError| ExchangeError::Unavailable {
        reason: error.reason(),
        detail: error.to_string(),
    };
    let store = pipeline.token_store();
    let mints = store
        .count_mint(&facts.principal, now)
        .await
        .map_err(unavailable)?;
    if mints > settings.mints_per_principal_per_minute {
        return Err(ExchangeError::RateLimited {
            retry_after: mint_window(now) + MINT_WINDOW_SECONDS - now,
            limit: settings.mints_per_principal_per_minute,
        });
    }

    let scope = format_scope_list(&granted);
    let minted = bridge
        .mint_exchanged(&identity, issuer, &scope, lifetime, now)
        .map_err(|error| refused_subject(error.reason, error.detail))?;
    let record = IssuedToken {
        jti: minted.jti,
        principal: minted.principal.subject,
        username: minted.principal.username,
        source_issuer: issuer.name.clone(),
        scopes: granted.iter().map(ToString::to_string).collect(),
        issued_at: minted.issued_at,
        expires_at: minted.expires_at,
    };
    // Not recorded, not issued: a token the lifecycle cannot list or revoke never leaves.
    store.record(&record, now).await.map_err(unavailable)?;
    Ok(Issued {
        token: minted.token,
        record,
    })
}

/// A subject token refused by the Check's verification or the bridge's templates: the
/// caller's `invalid_grant`, unless keys are missing here (503, retry).
fn refused_subject(reason: Reason, detail: String) -> ExchangeError {
    match reason {
        Reason::KeysUnavailable => ExchangeError::Unavailable { reason, detail },
        reason => ExchangeError::SubjectToken { reason, detail },
    }
}

/// The bridge and its `exchange` settings, when token exchange is on.
pub fn exchange_settings(pipeline: &Pipeline) -> Option<(&Bridge, &ExchangeSettings)> {
    let bridge = pipeline.bridge()?;
    Some((bridge, bridge.settings().exchange.as_ref()?))
}

/// RFC 6749 §5.1 / RFC 8693 §2.2.1: `no-store` and `no-cache`, a token is no cache's business.
fn no_store() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("cache-control", "no-store".into()),
        ("pragma", "no-cache".into()),
    ]
}

fn success(issued: &Issued) -> Answer {
    let record = &issued.record;
    Answer {
        status: 200,
        headers: no_store(),
        body: serde_json::json!({
            "access_token": &*issued.token,
            "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": record.expires_at - record.issued_at,
            "scope": record.scopes.join(" "),
        })
        .to_string(),
    }
}

/// RFC 6749 §5.2: `error`, `error_description`, plus our stable `reason`.
pub fn refusal(error: &ExchangeError) -> Answer {
    let mut headers = no_store();
    if let Some(seconds) = error.retry_after() {
        headers.push(("retry-after", seconds.to_string()));
    }
    if *error == ExchangeError::MethodNotAllowed {
        headers.push(("allow", "POST".into()));
    }
    Answer {
        status: error.status(),
        headers,
        body: serde_json::json!({
            "error": error.error(),
            "error_description": error.description(),
            "reason": error.reason(),
        })
        .to_string(),
    }
}
