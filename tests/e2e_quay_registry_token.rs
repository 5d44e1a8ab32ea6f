//! End to end against a real Quay v3.18: `docker login -p "$IDP_TOKEN"` then a token request
//! at Quay's `GET /v2/auth`, through the project's Envoy config and quay-authz, for an issuer
//! Quay trusts itself (`upstream: forward`). quay-authz rewrites the credential to
//! `Basic $oauthtoken:<token>` and cuts the `scope` parameters to its grants; Quay issues its
//! own registry token after its own checks, and that token's `access` claim is what the
//! registry will trust. alice owns `alice/*` in Quay (and is a superuser), so Quay alone would
//! grant her push: quay-authz's grant (pull only) must be what her registry token carries.

mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::envoy::{Envoy, require_envoy};
use common::issuer::{now, start_issuer};
use common::quay::{Quay, require_quay};
use common::service::TestService;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::{Value, json};

fn config(issuer: &DevIssuer) -> String {
    format!(
        r#"
quay:
  service: localhost
  realm: http://localhost/v2/auth
issuers:
  - name: dev
    issuer: {iss}
    audiences: [quay]
    algorithms: [RS256]
    allow_insecure_http: true
rules:
  - name: alice-readers
    issuers: [dev]
    grant: ["repository:alice/*:pull"]
"#,
        iss = issuer.issuer(),
    )
}

fn alice_token(issuer: &DevIssuer) -> String {
    let now = now();
    issuer
        .mint(
            SigningKeyKind::Rsa,
            &json!({
                "iss": issuer.issuer(), "aud": "quay", "sub": "alice",
                "preferred_username": "alice", "iat": now, "exp": now + 600,
            }),
        )
        .expect("mint alice's token")
}

/// The `access` claim of the registry token in Quay's `{"token": …}` answer (read, not
/// verified: only what Quay granted matters here).
fn access(body: &Value) -> Value {
    let token = body["token"].as_str().expect("a token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let payload = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    let claims: Value = serde_json::from_slice(&payload).expect("JSON claims");
    claims["access"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quay_issues_registry_tokens_no_wider_than_the_grants() {
    let Some(bin) = require_envoy() else { return };
    let Some(quay_dir) = require_quay() else {
        return;
    };
    let issuer = start_issuer().await;
    let quay = Quay::start(&quay_dir, &issuer.base_url()).await;
    let service = TestService::start(&config(&issuer), true).await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), quay.port).await;
    let http = reqwest::Client::new();
    let token = alice_token(&issuer);
    // alice/hello exists (a previous run may have made it already).
    let response = http
        .post(quay.url("/api/v1/repository"))
        .bearer_auth(&token)
        .json(&json!({"namespace": "alice", "repository": "hello",
                      "visibility": "private", "description": "issue 12 item 5"}))
        .send()
        .await
        .expect("create at Quay");
    assert!(
        [201, 400].contains(&response.status().as_u16()),
        "{}: {}",
        response.status(),
        quay.log_tail()
    );
    let target = "/v2/auth?service=localhost&scope=repository:alice/hello:pull,push";
    let login = format!("Basic {}", STANDARD.encode(format!("anything:{token}")));

    // Straight at Quay, as Quay's own SSO-JWT login: push and pull.
    let oauthtoken = format!("Basic {}", STANDARD.encode(format!("$oauthtoken:{token}")));
    let response = http
        .get(quay.url(target))
        .header("authorization", &oauthtoken)
        .send()
        .await
        .expect("token at Quay");
    assert_eq!(response.status(), 200, "{}", quay.log_tail());
    let direct = access(&response.json().await.expect("Quay's JSON"));
    let actions = direct[0]["actions"].as_array().cloned().unwrap_or_default();
    assert!(actions.contains(&json!("push")), "{direct}");

    // Straight at Quay with docker login's user name, the IdP token is not a password.
    let response = http
        .get(quay.url(target))
        .header("authorization", &login)
        .send()
        .await
        .expect("token at Quay");
    assert_eq!(response.status(), 401, "{}", quay.log_tail());

    // Through Envoy: the same login works, and the registry token carries pull only.
    let response = http
        .get(envoy.url(target))
        .header("authorization", &login)
        .send()
        .await
        .expect("token through Envoy");
    assert_eq!(
        response.status(),
        200,
        "{}\n{}",
        envoy.log(),
        quay.log_tail()
    );
    let through = access(&response.json().await.expect("Quay's JSON"));
    assert_eq!(
        through,
        json!([{"type": "repository", "name": "alice/hello", "actions": ["pull"]}])
    );
}
