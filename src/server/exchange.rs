//! The token-exchange endpoint on the HTTP listener (`POST {bridge.exchange.path}`, README
//! "Token exchange"). Its path is matched per request against the configuration in force,
//! like the bridge's documents, since a reload may move it or turn it off (then: 404).
//!
//! Transport rules, before the body is read: POST only (405), no other credential than the
//! subject token (an `Authorization` header or a cookie: 400 `credential_not_allowed`), a
//! form body only (RFC 6749 §3.2) of at most `exchange::MAX_BODY_BYTES` (413).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Service;
use crate::exchange::{self, Answer, ExchangeError, ExchangeRequest};
use crate::model::clock::unix_now;

/// Every request the other routes do not serve: the exchange endpoint when its path matches,
/// else the bridge's documents (GET), else 404 (nothing else is served: with exchange off,
/// its path is no different).
pub async fn fallback(State(service): State<Arc<Service>>, request: Request) -> Response {
    let pipeline = service.pipeline.load_full();
    if exchange::exchange_settings(&pipeline)
        .is_some_and(|(_, settings)| request.uri().path() == settings.path)
    {
        let request = read_request(request).await;
        let answer = exchange::handle(&pipeline, &service.metrics, request, unix_now()).await;
        return into_response(answer);
    }
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return super::bridge::documents(State(service), request.uri().clone()).await;
    }
    StatusCode::NOT_FOUND.into_response()
}

/// The transport checks, then the form. Never reads or logs the token beyond parsing it.
async fn read_request(request: Request) -> Result<ExchangeRequest, ExchangeError> {
    if request.method() != Method::POST {
        return Err(ExchangeError::MethodNotAllowed);
    }
    let headers = request.headers();
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(ExchangeError::CredentialNotAllowed("Authorization header"));
    }
    if headers.contains_key(header::COOKIE) {
        return Err(ExchangeError::CredentialNotAllowed("cookie"));
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(ExchangeError::UnsupportedContentType);
    }
    let too_large = ExchangeError::BodyTooLarge {
        limit: exchange::MAX_BODY_BYTES,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > exchange::MAX_BODY_BYTES as u64) {
        return Err(too_large);
    }
    let body = axum::body::to_bytes(request.into_body(), exchange::MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large)?;
    ExchangeRequest::parse(&body)
}

fn into_response(answer: Answer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in answer.headers {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
