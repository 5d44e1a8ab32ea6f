//! Integration: Quay's registry token endpoint (`GET /v2/auth`) through quay-authz's gRPC
//! Check, with real signed tokens from an OIDC issuer on loopback. `docker login -p "$TOKEN"`
//! arrives as Basic with a JWT password; the OK response must rewrite the credential to
//! `Basic $oauthtoken:<token>` and the `scope` parameters to what the policy grants.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::issuer::*;
use common::service::*;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// The response's query mutation: (keys and values set, keys removed).
fn query_mutation(response: &CheckResponse) -> (Vec<(String, String)>, Vec<String>) {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => (
            ok.query_parameters_to_set
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
            ok.query_parameters_to_remove.clone(),
        ),
        _ => (Vec::new(), Vec::new()),
    }
}

fn set_scope(value: &str) -> (Vec<(String, String)>, Vec<String>) {
    (vec![("scope".into(), value.into())], Vec::new())
}

#[tokio::test]
async fn docker_login_with_an_idp_token_is_validated_and_downscoped() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    // Grants: repo:write on acme/*.
    let token = entra_token(&issuer, &["Quay.acme.write"]);
    let check = |path: &'static str, authorization: String| {
        let service = &service;
        async move {
            service
                .check("GET", path, &[("authorization", &authorization)])
                .await
        }
    };

    // A login probe (no scope): allowed, the credential rewritten for Quay's SSO-JWT path.
    let response = check(
        "/v2/auth?account=anything&service=quay.example.com",
        basic("anything", &token),
    )
    .await;
    assert_eq!(decision(&response), ("allow".into(), "allowed".into()));
    assert_eq!(
        response_header(&response, "authorization"),
        Some(basic("$oauthtoken", &token))
    );
    assert_eq!(query_mutation(&response), (Vec::new(), Vec::new()));

    // Partial grants: `*` needs admin, other/ nothing.
    for (path, expected) in [
        (
            "/v2/auth?scope=repository:acme/app:pull,push,*",
            set_scope("repository:acme/app:pull,push"),
        ),
        (
            "/v2/auth?scope=repository:other/app:pull&scope=repository:acme/app:pull",
            set_scope("repository:acme/app:pull"),
        ),
        // Quay strips its own host; the one-part name is in Quay's library namespace, which
        // is never granted here.
        (
            "/v2/auth?scope=repository:quay.example.com/acme/app:push&scope=repository:app:pull",
            set_scope("repository:acme/app:push"),
        ),
        // Outside Quay's grammar: never passed on.
        (
            "/v2/auth?scope=repository:acme/app:pull+repository:other/app:push",
            (Vec::new(), vec!["scope".to_string()]),
        ),
        (
            "/v2/auth?scope=repository:other/app:pull",
            (Vec::new(), vec!["scope".to_string()]),
        ),
        // Everything granted in full: left as sent (Quay decodes what we decoded).
        (
            "/v2/auth?scope=repository%3Aacme%2Fapp%3Apush&scope=repository:acme/b:pull",
            (Vec::new(), Vec::new()),
        ),
    ] {
        let response = check(path, basic("$oauthtoken", &token)).await;
        assert_eq!(decision(&response).0, "allow", "{path}");
        assert_eq!(query_mutation(&response), expected, "{path}");
    }

    // A bearer token works there too (Quay itself reads Basic only, so it is rewritten).
    let response = service
        .check_bearer("GET", "/v2/auth?scope=repository:acme/app:pull", &token)
        .await;
    assert_eq!(
        response_header(&response, "authorization"),
        Some(basic("$oauthtoken", &token))
    );

    // An expired JWT password is denied like an expired bearer token.
    let mut expired = entra_claims(2, TENANT, TENANT, &["Quay.acme.write"]);
    expired["exp"] = serde_json::json!(now() - 600);
    let expired = issuer
        .mint(quay_authz::dev::issuer::SigningKeyKind::Rsa, &expired)
        .expect("mint");
    let response = check(
        "/v2/auth?scope=repository:acme/app:pull",
        basic("u", &expired),
    )
    .await;
    assert_eq!(decision(&response), ("deny".into(), "token_expired".into()));
    assert_eq!(http_status(&response), 401);
}

/// Refused with a 400 before any token reaches Quay: a key Werkzeug decodes to `scope` that
/// Envoy's rewrite would not touch, and two credentials in one request (Envoy joins a
/// repeated header with `,`).
#[tokio::test]
async fn dodged_scope_keys_and_two_credentials_are_refused() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = entra_token(&issuer, &["Quay.acme.write"]);
    let login = basic("u", &token);
    for (path, authorization, reason) in [
        (
            "/v2/auth?scope=repository:acme/app:pull&%73cope=repository:other/app:push",
            login.clone(),
            "path_ambiguous",
        ),
        (
            "/v2/auth?sc%6Fpe=repository:other/app:push",
            login.clone(),
            "path_ambiguous",
        ),
        (
            "/v2/auth?scop%65=repository:acme/app:pull",
            login.clone(),
            "path_ambiguous",
        ),
        (
            "/v2/auth?scope=repository:acme/app:pull",
            format!("{login},{}", basic("ns+robot", "robot-token")),
            "multiple_credentials",
        ),
        (
            "/v2/auth",
            format!("Bearer {token}, {}", basic("u", "password")),
            "multiple_credentials",
        ),
        (
            "/api/v1/repository/acme/app",
            format!("Bearer {token},Bearer {token}"),
            "multiple_credentials",
        ),
    ] {
        let response = service
            .check("GET", path, &[("authorization", &authorization)])
            .await;
        assert_eq!(
            decision(&response),
            ("deny".into(), reason.into()),
            "{path}"
        );
        assert_eq!(http_status(&response), 400);
    }
}

#[tokio::test]
async fn basic_with_a_jwt_password_elsewhere_stays_quays_business() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = entra_token(&issuer, &["Quay.acme.write"]);
    for path in [
        "/v2/acme/app/manifests/latest",
        "/api/v1/repository/acme/app",
        "/v2/",
    ] {
        let response = service
            .check("GET", path, &[("authorization", &basic("u", &token))])
            .await;
        assert_eq!(
            decision(&response),
            ("passthrough".into(), "no_credentials".into()),
            "{path}"
        );
        assert_eq!(response_header(&response, "authorization"), None);
        assert_eq!(query_mutation(&response), (Vec::new(), Vec::new()));
    }
    // Quay's own credentials on /v2/auth (a robot, a password) pass through as before.
    for authorization in [basic("ns+robot", "ROBOTTOKEN"), basic("alice", "password")] {
        let response = service
            .check(
                "GET",
                "/v2/auth?scope=repository:other/app:push",
                &[("authorization", &authorization)],
            )
            .await;
        assert_eq!(decision(&response).0, "passthrough");
        assert_eq!(query_mutation(&response), (Vec::new(), Vec::new()));
    }
}

#[tokio::test]
async fn remove_authorization_keeps_the_idp_token_from_quay_on_v2_auth_too() {
    let issuer = start_issuer().await;
    let service = TestService::start(
        &config_for(&issuer, "headers: {remove_authorization: true}"),
        true,
    )
    .await;
    let token = entra_token(&issuer, &["Quay.acme.write"]);
    let response = service
        .check(
            "GET",
            "/v2/auth?scope=repository:acme/app:pull",
            &[("authorization", &basic("u", &token))],
        )
        .await;
    assert_eq!(decision(&response).0, "allow");
    assert_eq!(response_header(&response, "authorization"), None);
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("not OK")
    };
    assert!(ok.headers_to_remove.contains(&"authorization".to_string()));
}
