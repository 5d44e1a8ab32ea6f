//! End to end against a real Quay v3.18 (issue 10 item 0): the project's Envoy config in front
//! of Quay, quay-authz as its ext_authz service, and one loopback OIDC issuer that both trust
//! (Quay as its login provider, quay-authz as a configured issuer).
//!
//! The attack: a token whose grants are pull and push on `alice/*` sends
//! `DELETE //api/v1/repository/alice/hello`. Gunicorn keeps the slashes and Werkzeug strips them,
//! so Quay serves the delete view with the caller's full rights (alice is a Quay superuser). It
//! must be refused by quay-authz, and the repository must still be there.

mod common;

use common::envoy::{Envoy, require_envoy};
use common::issuer::{now, start_issuer};
use common::quay::{Quay, require_quay};
use common::service::TestService;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::json;

/// quay-authz trusts the same issuer Quay trusts; `pushers` get pull and push on `alice/*`.
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
  - name: alice-pushers
    issuers: [dev]
    when: {{groups_any: [pushers]}}
    grant: ["repository:alice/*:pull,push"]
"#,
        iss = issuer.issuer(),
    )
}

/// A token both accept: `aud` is Quay's client id, `preferred_username` names alice (a Quay
/// superuser in `.quay`'s config; Quay creates her on first sight).
fn alice_token(issuer: &DevIssuer) -> String {
    let now = now();
    issuer
        .mint(
            SigningKeyKind::Rsa,
            &json!({
                "iss": issuer.issuer(), "aud": "quay", "sub": "alice",
                "preferred_username": "alice", "groups": ["pushers"],
                "iat": now, "exp": now + 600,
            }),
        )
        .expect("mint alice's token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_slashes_delete_nothing_in_a_real_quay() {
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
    let repository = "/api/v1/repository/alice/hello";

    // Straight at Quay, as alice: a fresh alice/hello (a previous run may have left one).
    let response = http
        .delete(quay.url(repository))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete at Quay");
    assert!(
        [204, 404].contains(&response.status().as_u16()),
        "{}: {}",
        response.status(),
        quay.log_tail()
    );
    let response = http
        .post(quay.url("/api/v1/repository"))
        .bearer_auth(&token)
        .json(&json!({"namespace": "alice", "repository": "hello",
                      "visibility": "private", "description": "issue 10 item 0"}))
        .send()
        .await
        .expect("create at Quay");
    assert_eq!(response.status(), 201, "{}", quay.log_tail());

    // Allowed through Envoy and served by Quay itself: the path to Quay works.
    let response = http
        .get(envoy.url(repository))
        .bearer_auth(&token)
        .send()
        .await
        .expect("read through Envoy");
    assert_eq!(response.status(), 200, "{}", envoy.log());
    let body: serde_json::Value = response.json().await.expect("Quay's JSON");
    assert_eq!(body["namespace"], "alice");
    assert_eq!(body["name"], "hello");

    // The attack, in every spelling: refused by quay-authz (repo:admin is not granted).
    for target in [
        format!("/{repository}"),
        format!("//{repository}"),
        repository.to_string(),
    ] {
        let response = http
            .delete(envoy.url(&target))
            .bearer_auth(&token)
            .send()
            .await
            .expect("delete through Envoy");
        assert_eq!(response.status(), 403, "DELETE {target}: {}", envoy.log());
        let body: serde_json::Value = response.json().await.expect("quay-authz's JSON");
        assert_eq!(body["reason"], "insufficient_scope", "DELETE {target}");
    }

    // And Quay still has the repository.
    let response = http
        .get(quay.url(repository))
        .bearer_auth(&token)
        .send()
        .await
        .expect("read at Quay");
    assert_eq!(response.status(), 200, "alice/hello was deleted");
}
