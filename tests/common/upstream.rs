//! An HTTP upstream on loopback that stands in for Quay and records what reaches it.
//!
//! ```ignore
//! let upstream = RecordingUpstream::start().await;
//! let envoy = Envoy::start(&bin, authz_grpc_port, upstream.port).await;
//! // … a request through Envoy …
//! let seen = upstream.last_request().expect("the request reached Quay");
//! assert_eq!(seen.header("x-quay-authz-user"), Some("alice"));
//! ```
//!
//! Every request, whatever its method and path, is recorded and answered `200 upstream ok`, so a
//! test sees exactly which requests Envoy let through and with which headers (the identity
//! headers quay-authz set, and the spoofed ones it must have removed).

#![allow(dead_code)]

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};

/// Body of every upstream response, so a test can tell an upstream answer from Envoy's own.
pub const UPSTREAM_BODY: &str = "upstream ok";

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as received: path and query string (HTTP/2's `:path`).
    pub path: String,
    /// Every header line in arrival order; a repeated header appears once per value. Names are
    /// lower case (HTTP/2 and hyper normalise them); values not valid UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of header `name`, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every value of header `name`, matched case-insensitively.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

type RequestLog = Arc<Mutex<Vec<RecordedRequest>>>;

/// The recording upstream. Its server runs on the test's tokio runtime and stops with it.
pub struct RecordingUpstream {
    pub port: u16,
    requests: RequestLog,
}

// === impl RecordingUpstream ===

impl RecordingUpstream {
    /// Listens on a free port of 127.0.0.1 and serves in a background task.
    pub async fn start() -> RecordingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the recording upstream on 127.0.0.1");
        let port = listener
            .local_addr()
            .expect("recording upstream address")
            .port();
        let requests = RequestLog::default();
        let app = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&requests));
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("recording upstream on port {port} stopped: {err}");
            }
        });
        RecordingUpstream { port, requests }
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    /// The most recent request, if any reached the upstream.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.lock().last().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        // A panic elsewhere while holding the lock leaves the log intact (pushes are atomic from
        // the reader's view), so keep reading it rather than cascading the panic.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn record(
    State(requests): State<RequestLog>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> &'static str {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), ToString::to_string);
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(RecordedRequest {
            method: method.to_string(),
            path,
            headers,
        });
    UPSTREAM_BODY
}
