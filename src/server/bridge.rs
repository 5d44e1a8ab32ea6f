//! The identity bridge on the HTTP listener: its OpenID discovery document and JWKS, public
//! (Quay fetches them without credentials), and the watcher that re-reads the signing keys.
//!
//! The paths follow `bridge.issuer` (OIDC Discovery §4: issuer + `/.well-known/...`), which a
//! reload may change, so they are matched per request against the configuration in force
//! rather than fixed in the router.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::Service;

/// How long Quay (and caches between) may keep either document. Short: a key added for a
/// rotation is published before it signs only if Quay refetches soon (Quay also refetches on
/// an unknown `kid`).
const CACHE_CONTROL: &str = "public, max-age=300";

/// GET on any path the other routes do not serve: the bridge's two documents, else 404.
pub async fn documents(State(service): State<Arc<Service>>, uri: Uri) -> Response {
    let pipeline = service.pipeline.load();
    let Some(bridge) = pipeline.bridge() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let settings = bridge.settings();
    let body = if uri.path() == settings.discovery_path {
        bridge.discovery()
    } else if uri.path() == settings.jwks_path {
        bridge.jwks()
    } else if uri.path() == settings.authorize_path {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::bridge::Bridge::AUTHORIZE_ANSWER,
        )
            .into_response();
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Re-reads the bridge's key files every few seconds until `stop`, like the gRPC TLS files: new
/// contents apply at once (published and, for the last file, signing; cached tokens of the
/// old key set are minted again), and files that cannot be used keep the previous keys.
pub async fn watch_keys(service: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let mut last_refusal: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::tls::RELOAD_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let pipeline = service.pipeline.load_full();
        let Some(bridge) = pipeline.bridge() else {
            continue;
        };
        match bridge.refresh_keys() {
            Ok(applied) => {
                last_refusal = None;
                if applied {
                    tracing::info!(
                        kid = %bridge.settings().keys.current().signing().kid,
                        "bridge signing keys reloaded"
                    );
                }
            }
            Err(error) => {
                let refusal = format!("bridge.signing_keys: {error}");
                if last_refusal.as_ref() != Some(&refusal) {
                    tracing::error!(
                        "bridge signing keys cannot be used, the previous keys keep signing: {refusal}"
                    );
                    last_refusal = Some(refusal);
                }
            }
        }
    }
}
