//! A development upstream — FOR LOCAL TESTING ONLY: answers every request with its method,
//! path and headers as JSON, so the quickstart shows what reached "Quay" behind Envoy.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::json;

/// Serves until the process ends.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = Router::new().fallback(echo);
    axum::serve(listener, app).await
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> axum::Json<serde_json::Value> {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                json!(String::from_utf8_lossy(value.as_bytes())),
            )
        })
        .collect();
    axum::Json(json!({
        "upstream": "quay-authz dev-upstream (stands in for Quay)",
        "method": method.as_str(),
        "path": uri.to_string(),
        "headers": headers,
    }))
}
