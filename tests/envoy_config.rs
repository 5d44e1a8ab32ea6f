mod common;

// `deploy/envoy/envoy.yaml` checked by a real Envoy: it validates, and when quay-authz cannot be
// reached Envoy fails closed with 503 and nothing reaches Quay. The benchmark's Envoy configs
// (scripts/bench/envoy_compare.sh) validate too, and `deploy/envoy/envoy-mtls.yaml` validates and
// really calls quay-authz over mutual TLS.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::envoy::{
    Envoy, deploy_config_path, deploy_mtls_config_path, render_config, require_envoy,
};
use common::issuer::{config_for, dev_claims, start_issuer};
use common::pki::{Leaf, ServerFiles, TestCa};
use common::service::{start_running, wait_until_ready};
use common::tools::run_tool;
use common::upstream::RecordingUpstream;
use quay_authz::dev::issuer::SigningKeyKind;

#[test]
fn deploy_config_passes_envoy_validation() {
    let Some(bin) = require_envoy() else { return };
    assert_envoy_accepts(&bin, &deploy_config_path());
}

/// `envoy-mtls.yaml` names certificate files, which Envoy reads while validating: render it
/// with files made for this run.
#[test]
fn mtls_deploy_config_passes_envoy_validation() {
    let Some(bin) = require_envoy() else { return };
    let ca = TestCa::new("validation CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let _files = ServerFiles::write(dir.path(), &ca.client("envoy"), Some(&ca));
    let rendered = dir.path().join("envoy-mtls.yaml");
    std::fs::write(
        &rendered,
        render_config(
            &deploy_mtls_config_path(),
            [8000, 9901, 9191, 8080],
            &mtls_replacements(dir.path()),
        ),
    )
    .expect("write the rendered config");
    assert_envoy_accepts(&bin, &rendered);
}

/// The configs `envoy_compare.sh` runs, rendered by the script itself from the deploy config and
/// a real issuer's JWKS (Envoy parses the inline JWKS of `jwt_authn` when it validates). Each
/// variant must carry exactly the auth filter it is named after, or the benchmark would compare
/// the wrong things.
#[tokio::test]
async fn bench_configs_pass_envoy_validation() {
    let Some(bin) = require_envoy() else { return };
    let issuer = start_issuer().await;
    let jwks = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build an HTTP client")
        .get(issuer.jwks_url())
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .expect("fetch the issuer's JWKS")
        .text()
        .await
        .expect("read the issuer's JWKS");
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.trim()).expect("write the JWKS");
    let out = dir.path().join("configs");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/envoy_compare.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("render")
        .arg("--out")
        .arg(&out)
        .args(["--issuer", issuer.issuer(), "--jwks"])
        .arg(&jwks_path)
        .output()
        .expect("run envoy_compare.sh render");
    assert!(
        output.status.success(),
        "envoy_compare.sh render failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    for (file, auth_filter) in [
        ("none.yaml", None),
        ("jwt_authn.yaml", Some("envoy.filters.http.jwt_authn")),
        ("ext_authz.yaml", Some("envoy.filters.http.ext_authz")),
        // The fourth variant: the same ext_authz filter, to the no-op server.
        ("noop.yaml", Some("envoy.filters.http.ext_authz")),
        // The fifth: the same filter again, to a quay-authz with its token cache off.
        ("uncached.yaml", Some("envoy.filters.http.ext_authz")),
        ("upstream.yaml", None),
    ] {
        let path = out.join(file);
        let config = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
        let filters: Vec<&str> = [
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.ext_authz",
        ]
        .into_iter()
        .filter(|filter| config.contains(&format!("- name: {filter}")))
        .collect();
        assert_eq!(
            filters,
            auth_filter.into_iter().collect::<Vec<_>>(),
            "auth filters of {file}"
        );
        assert_envoy_accepts(&bin, &path);
    }

    // (c), (d) and (e) differ only in where their Checks go: quay-authz (render's port 10003), the
    // no-op server (10005) or the cache-off quay-authz (10006). Anything else would make their
    // ratios measure something else.
    let read = |file: &str| {
        std::fs::read_to_string(out.join(file)).unwrap_or_else(|err| panic!("read {file}: {err}"))
    };
    let ext_authz = read("ext_authz.yaml");
    assert!(ext_authz.contains("port_value: 10003"));
    for (file, port) in [("noop.yaml", 10005), ("uncached.yaml", 10006)] {
        assert!(!ext_authz.contains(&format!("port_value: {port}")));
        assert_eq!(
            read(file),
            ext_authz.replace("port_value: 10003", &format!("port_value: {port}")),
            "{file} is ext_authz.yaml with its own authorization server's port"
        );
    }
}

/// `envoy --mode validate -c path` succeeds and says OK.
fn assert_envoy_accepts(bin: &Path, path: &Path) {
    let log = run_tool(
        bin,
        &["--mode", "validate", "-c", &path.to_string_lossy()],
        &format!("envoy --mode validate -c {}", path.display()),
    );
    assert!(
        log.contains("OK"),
        "no OK from envoy --mode validate for {}:\n{log}",
        path.display()
    );
}

/// What `envoy-mtls.yaml` names that a test replaces: the client certificate directory and
/// quay-authz's Service address (its certificate names stay, the test certificates carry them).
fn mtls_replacements(certificates: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "/etc/envoy/quay-authz-client/",
            format!("{}/", certificates.display()),
        ),
        (
            "address: quay-authz.quay.svc.cluster.local",
            "address: 127.0.0.1".to_string(),
        ),
    ]
}

/// Envoy calls quay-authz over mTLS as `envoy-mtls.yaml` says: with a client certificate from
/// quay-authz's client CA the decision goes through; with one from another CA the handshake
/// fails and Envoy fails closed with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_calls_quay_authz_over_mtls() {
    let Some(bin) = require_envoy() else { return };
    let issuer = start_issuer().await;
    let ca = TestCa::new("quay-authz CA");
    let server_dir = tempfile::tempdir().expect("tempdir");
    let server_files = ServerFiles::write(server_dir.path(), &ca.server("quay-authz"), Some(&ca));
    let running = start_running(&server_files.yaml(true), &config_for(&issuer, "")).await;
    wait_until_ready(&running).await;
    let upstream = RecordingUpstream::start().await;
    let token = issuer
        .mint(SigningKeyKind::Rsa, &dev_claims(&issuer, &["readers"]))
        .expect("mint");
    // Each Envoy presents `client`'s certificate and trusts quay-authz's CA.
    let pull_through_envoy = async |client: Leaf| {
        let dir = tempfile::tempdir().expect("tempdir");
        let _files = ServerFiles::write(dir.path(), &client, Some(&ca));
        let envoy = Envoy::start_config(
            &bin,
            &deploy_mtls_config_path(),
            running.grpc_addr.port(),
            upstream.port,
            &mtls_replacements(dir.path()),
        )
        .await;
        let response = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build an HTTP client")
            .get(envoy.url("/v2/acme/app/manifests/latest"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request through Envoy");
        (response.status(), envoy.log())
    };

    let (status, log) = pull_through_envoy(ca.client("envoy")).await;
    assert_eq!(status, 200, "{log}");
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(seen.header("x-quay-authz-user"), Some("bob"));

    let before = upstream.requests().len();
    let stranger = TestCa::new("someone else's CA");
    let (status, log) = pull_through_envoy(stranger.client("envoy")).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{log}");
    assert_eq!(
        upstream.requests().len(),
        before,
        "the request reached Quay"
    );
    running.shutdown().await;
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

/// The identity bridge's discovery document and JWKS are public documents Quay fetches through
/// the edge: their two exact paths (GET), and the token exchange's (POST), reach quay-authz's
/// HTTP port without a Check — even
/// with the authz gRPC service down — while every other path, near misses included, is still
/// checked (fails closed here) and nothing reaches quay-authz's HTTP port.
#[tokio::test]
async fn bridge_discovery_and_jwks_skip_the_check_and_nothing_else_does() {
    let Some(bin) = require_envoy() else { return };
    let quay = RecordingUpstream::start().await;
    let bridge = RecordingUpstream::start().await;
    let envoy = Envoy::start_config(
        &bin,
        &common::envoy::deploy_config_path(),
        closed_port(),
        quay.port,
        &[(
            common::envoy::DEPLOY_AUTHZ_HTTP_PORT,
            format!("port_value: {}", bridge.port),
        )],
    )
    .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build an HTTP client");

    for path in [
        "/quay-authz/.well-known/openid-configuration",
        "/quay-authz/.well-known/jwks.json",
    ] {
        let response = client
            .get(envoy.url(path))
            .send()
            .await
            .expect("GET through Envoy");
        assert_eq!(response.status(), 200, "GET {path}: {}", envoy.log());
        let served = bridge.last_request().expect("the bridge saw the request");
        assert_eq!(served.path, path);
    }
    // Token exchange: POST on its exact path, rewritten to the endpoint's own path.
    let response = client
        .post(envoy.url("/quay-authz/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=x")
        .send()
        .await
        .expect("POST through Envoy");
    assert_eq!(response.status(), 200, "{}", envoy.log());
    let served = bridge.last_request().expect("the bridge saw the exchange");
    assert_eq!(served.path, "/oauth2/token");
    assert_eq!(served.method, "POST");
    let served = bridge.requests().len();

    for (method, path) in [
        (
            reqwest::Method::POST,
            "/quay-authz/.well-known/openid-configuration",
        ),
        (reqwest::Method::GET, "/quay-authz/oauth2/token"),
        (reqwest::Method::POST, "/quay-authz/oauth2/token/x"),
        (reqwest::Method::POST, "/quay-authz/oauth2/tokens"),
        (reqwest::Method::POST, "/oauth2/token"),
        (reqwest::Method::GET, "/quay-authz/.well-known/"),
        (reqwest::Method::GET, "/quay-authz/metrics"),
        (reqwest::Method::GET, "/quay-authz/.well-known/jwks.json/x"),
        (reqwest::Method::GET, "/quay-authz//.well-known/jwks.json"),
        (reqwest::Method::GET, "/QUAY-AUTHZ/.well-known/jwks.json"),
        (
            reqwest::Method::GET,
            "/quay-authz/.well-known/openid-configuration?x=1/../../api",
        ),
        (reqwest::Method::GET, "/.well-known/openid-configuration"),
    ] {
        let response = client
            .request(method.clone(), envoy.url(path))
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path} through Envoy: {err}"));
        let status = response.status().as_u16();
        // The query-string case is the one exact path (Envoy's `path` match ignores the query):
        // still the bridge's document, never Quay.
        if path.contains('?') {
            assert_eq!(status, 200, "{method} {path}: {}", envoy.log());
            continue;
        }
        assert_eq!(
            status,
            503,
            "{method} {path} was not checked: {}",
            envoy.log()
        );
    }
    assert!(quay.requests().is_empty(), "{:?}", quay.requests());
    assert_eq!(
        bridge.requests().len(),
        served + 1,
        "{:?}",
        bridge.requests()
    );
}
