//! The identity bridge against a real Quay v3.18: Quay, with quay-authz as its second OIDC login
//! provider (`OIDC_SERVER` = `bridge.issuer` + `/`, `CLIENT_ID` = `bridge.audience`), accepts the
//! bridge tokens quay-authz mints and answers as the templated user, created on first use; and
//! after a key rotation it accepts the new kid and keeps accepting tokens minted before.
//!
//! Straight to Quay (no Envoy): this is the proof that what the bridge signs passes Quay's own
//! SSO-JWT code (`auth/oauth.py`, `oauth/oidc.py`); the Envoy path is `e2e_quay`'s.

mod common;

use std::net::TcpListener;
use std::path::Path;

use common::issuer::{now, start_issuer};
use common::pki::rsa_key_file;
use common::quay::{Quay, require_quay};
use common::service::{check_request, response_header};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use quay_authz::config::Config;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::{Value, json};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn config(issuer: &DevIssuer, http_port: u16, keys: &[&Path]) -> Config {
    let keys: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
    let text = format!(
        r#"
listen: {{grpc: "127.0.0.1:0", http: "127.0.0.1:{http_port}", admin: "127.0.0.1:0"}}
quay:
  service: localhost
  realm: http://localhost/v2/auth
bridge:
  issuer: http://127.0.0.1:{http_port}
  audience: quay-authz
  signing_keys: [{keys}]
issuers:
  - name: gha
    preset: github-actions
    issuer: {iss}
    audiences: [quay-authz-gha]
    allow_insecure_http: true
    upstream: exchange
rules:
  - name: acme
    issuers: [gha]
    when: {{claims: {{repository_owner: acme}}}}
    grant: ["user:read"]
"#,
        keys = keys.join(", "),
        iss = issuer.issuer(),
    );
    Config::parse(&text, "bridge_quay").unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_quay_accepts_bridge_tokens_and_their_rotation() {
    let Some(dir) = require_quay() else { return };
    let issuer = start_issuer().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let old_key = rsa_key_file(keys.path(), "2026-11.pem");
    let http_port = free_port();
    let running = quay_authz::server::start(config(&issuer, http_port, &[&old_key]))
        .await
        .expect("quay-authz starts");
    common::service::wait_until_ready(&running).await;
    let client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .expect("gRPC");

    // Quay's second login provider is quay-authz (the first, TESTOIDC, is the loopback issuer).
    let extra = keys.path().join("quay-extra.yaml");
    std::fs::write(
        &extra,
        format!(
            "QUAYAUTHZ_LOGIN_CONFIG: {{SERVICE_NAME: quay-authz, OIDC_SERVER: \"http://127.0.0.1:{http_port}/\", CLIENT_ID: quay-authz, CLIENT_SECRET: unused, LOGIN_SCOPES: [openid], DEBUGGING: true}}\n"
        ),
    )
    .expect("extra config");
    // SAFETY: set before Quay's run.sh is spawned; this test's other threads read no environment.
    unsafe { std::env::set_var("QUAY_EXTRA_CONFIG", &extra) };
    let quay = Quay::start(&dir, &issuer.base_url()).await;

    let run_id = now();
    let caller = issuer
        .mint(
            SigningKeyKind::Rsa,
            &json!({
                "iss": issuer.issuer(), "aud": "quay-authz-gha", "sub": "repo:acme/app:ref:refs/heads/main",
                "repository": "acme/app", "repository_owner": "acme",
                "repository_owner_id": "9100", "repository_id": format!("{run_id}"),
                "iat": now(), "exp": now() + 600,
            }),
        )
        .expect("mint");
    let bridge_token = || {
        let mut client = client.clone();
        let authorization = format!("Bearer {caller}");
        async move {
            let response = client
                .check(check_request(
                    "GET",
                    "/api/v1/user/",
                    &[("authorization", &authorization)],
                ))
                .await
                .expect("Check")
                .into_inner();
            response_header(&response, "authorization").expect("a bridge token")
        }
    };
    let http = reqwest::Client::new();
    let user = |authorization: String| {
        let request = http
            .get(quay.url("/api/v1/user/"))
            .header("authorization", authorization);
        async move {
            let response = request.send().await.expect("Quay answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };

    let before = bridge_token().await;
    let (status, body) = user(before.clone()).await;
    assert_eq!(status, 200, "{body}\n{}", quay.log_tail());
    let expected = format!("gh-9100-{run_id}");
    assert_eq!(body["username"], expected.as_str(), "{body}");

    // Rotation: a second key, last in the list, signs from the reload on; both are published.
    let new_key = rsa_key_file(keys.path(), "2026-12.pem");
    running
        .service
        .apply(config(&issuer, http_port, &[&old_key, &new_key]));
    let after = bridge_token().await;
    assert_ne!(after, before);
    let (status, body) = user(after).await;
    assert_eq!(status, 200, "the new kid: {body}\n{}", quay.log_tail());
    assert_eq!(body["username"], expected.as_str());
    let (status, _) = user(before).await;
    assert_eq!(
        status, 200,
        "a token minted before the rotation, still valid"
    );

    running.shutdown().await;
}
