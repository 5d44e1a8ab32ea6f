//! End to end: a real Envoy (deploy/envoy/envoy.yaml) in front of a recording upstream, with
//! quay-authz as its ext_authz service and a real OIDC issuer on loopback.

mod common;

use common::envoy::{Envoy, require_envoy};
use common::issuer::*;
use common::service::TestService;
use common::upstream::RecordingUpstream;
use quay_authz::dev::issuer::SigningKeyKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_quay_authz_decisions() {
    let Some(bin) = require_envoy() else { return };
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let upstream = RecordingUpstream::start().await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), upstream.port).await;
    let http = reqwest::Client::new();
    let token = entra_token(&issuer, &["Quay.acme.write"]);

    // Allowed: reaches Quay with our identity headers, and a forged one does not survive.
    let response = http
        .get(envoy.url("/api/v1/repository/acme/app?includeTags=true"))
        .bearer_auth(&token)
        .header("x-quay-authz-user", "forged-admin")
        .header("x-quay-authz-groups", "Quay.Admin")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{}", envoy.log());
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(seen.path, "/api/v1/repository/acme/app?includeTags=true");
    assert_eq!(
        seen.header_values("x-quay-authz-user"),
        ["alice@example.com"]
    );
    assert_eq!(
        seen.header_values("x-quay-authz-groups"),
        ["Quay.acme.write"]
    );
    assert_eq!(seen.header("x-quay-authz-issuer"), Some("entra"));
    assert_eq!(seen.header("x-quay-authz-tenant"), Some(TENANT));
    assert_eq!(
        seen.header("x-quay-authz-scopes"),
        Some("repo:write on acme/*")
    );

    // Passthrough (no token): reaches Quay, with every forged identity header stripped.
    let count = upstream.requests().len();
    let response = http
        .get(envoy.url("/api/v1/repository/acme/app"))
        .header("x-quay-authz-user", "forged-admin")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let seen = upstream
        .last_request()
        .expect("passthrough reached upstream");
    assert_eq!(upstream.requests().len(), count + 1);
    assert_eq!(seen.header("x-quay-authz-user"), None);

    // Expired token: 401 with an RFC 6750 challenge; Quay never sees it.
    let count = upstream.requests().len();
    let mut expired = entra_claims(2, TENANT, TENANT, &["Quay.acme.write"]);
    expired["exp"] = serde_json::json!(now() - 600);
    let expired = issuer.mint(SigningKeyKind::Rsa, &expired).expect("mint");
    let response = http
        .get(envoy.url("/api/v1/repository/acme/app"))
        .bearer_auth(&expired)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"quay.example.com\", error=\"invalid_token\""),
        "{challenge}"
    );
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["reason"], "token_expired");

    // Registry deny: the Docker challenge with realm, service and scope, and Docker's body.
    let response = http
        .get(envoy.url("/v2/acme/app/manifests/latest"))
        .bearer_auth(&expired)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"https://quay.example.com/v2/auth\",service=\"quay.example.com\",scope=\"repository:acme/app:pull\""
    );
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // Valid identity without the scope: 403 insufficient_scope naming it.
    let response = http
        .delete(envoy.url("/api/v1/repository/acme/app"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        challenge.contains("error=\"insufficient_scope\", scope=\"repo:admin on acme/app\""),
        "{challenge}"
    );
    let response = http
        .put(envoy.url("/v2/other/app/manifests/v1"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        upstream.requests().len(),
        count,
        "denied requests must not reach Quay"
    );
}

/// Issue 10 item 7: with `headers_with_underscores_action: ALLOW` (Istio's default) Envoy
/// forwards `x_quay_authz_user`, and Quay's gunicorn reads it as `HTTP_X_QUAY_AUTHZ_USER`, the
/// same variable as `x-quay-authz-user`. Every such spelling must be gone before the upstream,
/// on allow and on passthrough; our own identity headers must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_identity_headers_never_reach_quay_when_envoy_allows_underscores() {
    let Some(bin) = require_envoy() else { return };
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let upstream = RecordingUpstream::start().await;
    let envoy = Envoy::start_config(
        &bin,
        &common::envoy::deploy_config_path(),
        service.running.grpc_addr.port(),
        upstream.port,
        &[(
            "headers_with_underscores_action: DROP_HEADER",
            "headers_with_underscores_action: ALLOW".to_string(),
        )],
    )
    .await;
    let http = reqwest::Client::new();
    let token = entra_token(&issuer, &["Quay.acme.write"]);
    // WSGI's folding: lower case, `_` read as `-`.
    let folds_to_identity = |name: &str| {
        name.to_ascii_lowercase()
            .replace('_', "-")
            .starts_with("x-quay-authz-")
    };
    let forged = [
        ("x_quay_authz_user", "forged-admin"),
        ("X_Quay_Authz_Groups", "Quay.Admin"),
        ("x-quay_authz-scopes", "super:user"),
    ];

    for (case, bearer) in [("allow", Some(token.as_str())), ("passthrough", None)] {
        let mut request = http.get(envoy.url("/api/v1/repository/acme/app"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        for (name, value) in forged {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 200, "{case}: {}", envoy.log());
        let seen = upstream.last_request().expect("the request reached Quay");
        let identity: Vec<&(String, String)> = seen
            .headers
            .iter()
            .filter(|(name, _)| folds_to_identity(name))
            .collect();
        match bearer {
            // Only the headers quay-authz set, with its values.
            Some(_) => {
                assert!(
                    identity.iter().all(|(name, _)| !name.contains('_')),
                    "{case}: an underscore spelling reached Quay: {identity:?}"
                );
                assert_eq!(
                    seen.header_values("x-quay-authz-user"),
                    ["alice@example.com"],
                    "{case}"
                );
                assert!(
                    identity.iter().all(|(_, value)| value != "forged-admin"
                        && value != "Quay.Admin"
                        && value != "super:user"),
                    "{case}: a forged value reached Quay: {identity:?}"
                );
            }
            None => assert!(
                identity.is_empty(),
                "{case}: identity headers reached Quay: {identity:?}"
            ),
        }
    }
}
