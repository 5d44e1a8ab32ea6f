mod common;

// `deploy/envoy/envoy.yaml` checked by a real Envoy: it validates, and when quay-authz cannot be
// reached Envoy fails closed with 503 and nothing reaches Quay.

use std::net::TcpListener;
use std::time::Duration;

use common::envoy::{Envoy, deploy_config_path, require_envoy};
use common::tools::run_tool;
use common::upstream::RecordingUpstream;

#[test]
fn deploy_config_passes_envoy_validation() {
    let Some(bin) = require_envoy() else { return };
    let config = deploy_config_path();
    let log = run_tool(
        &bin,
        &["--mode", "validate", "-c", &config.to_string_lossy()],
        "envoy --mode validate -c deploy/envoy/envoy.yaml",
    );
    assert!(
        log.contains("OK"),
        "no OK from envoy --mode validate:\n{log}"
    );
}

/// `failure_mode_allow: false` with `status_on_error: 503`: an unreachable authz service denies
/// every request, for API and registry routes alike (the /v2/ route has its own per-route
/// ext_authz settings, so it is checked separately).
#[tokio::test]
async fn unreachable_authz_service_fails_closed_with_503() {
    let Some(bin) = require_envoy() else { return };
    let upstream = RecordingUpstream::start().await;
    let envoy = Envoy::start(&bin, closed_port(), upstream.port).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build an HTTP client");

    for (method, path) in [
        (
            reqwest::Method::GET,
            "/api/v1/repository/acme/app?includeTags=true",
        ),
        (reqwest::Method::POST, "/api/v1/repository"),
        (reqwest::Method::GET, "/v2/acme/app/manifests/latest"),
        (reqwest::Method::GET, "/"),
    ] {
        let response = client
            .request(method.clone(), envoy.url(path))
            .header("authorization", "Bearer not-checked-by-anyone")
            .body(r#"{"namespace":"acme","repository":"app"}"#)
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path} through Envoy: {err}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path} with the authz service down: body {body:?}\n{}",
            envoy.log()
        );
    }

    assert!(
        upstream.requests().is_empty(),
        "requests reached the upstream although authorization failed: {:?}",
        upstream.requests()
    );

    // The JSON access log on stdout records the failure as ext_authz's (UAEX) and the path
    // without its query string.
    let line = wait_for_access_log(&envoy, "/api/v1/repository/acme/app").await;
    assert_eq!(line["status"], 503, "access log line: {line}");
    assert_eq!(line["flags"], "UAEX", "access log line: {line}");
    assert_eq!(line["method"], "GET", "access log line: {line}");
    assert!(
        line.get("authz").is_some(),
        "access log line has no `authz` (ext_authz dynamic metadata) field: {line}"
    );
}

/// The access log line for `path`, parsed. Envoy writes it just after the response, so poll.
async fn wait_for_access_log(envoy: &Envoy, path: &str) -> serde_json::Value {
    for _ in 0..50 {
        let found = envoy
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["path"] == path);
        if let Some(entry) = found {
            return entry;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no access log line for {path} within 5 s; Envoy output:\n{}",
        envoy.log()
    );
}

/// A loopback port with nothing listening on it (bound, read, released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}
