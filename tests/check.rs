//! Integration: quay-authz's gRPC Check against a real OIDC issuer on loopback, with real
//! signed tokens (RSA and EC) and real JWKS fetches.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::issuer::*;
use common::service::*;
use quay_authz::dev::issuer::SigningKeyKind;
use serde_json::json;

const REPO: &str = "/api/v1/repository/acme/app";

#[tokio::test]
async fn entra_v1_and_v2_tokens_of_one_tenant_are_both_accepted() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    for version in [1, 2] {
        let token = issuer
            .mint(
                SigningKeyKind::Rsa,
                &entra_claims(version, TENANT, TENANT, &["Quay.acme.write"]),
            )
            .expect("mint");
        for (method, path) in [
            ("GET", REPO),
            ("PUT", REPO),
            ("GET", "/v2/acme/app/manifests/latest"),
            ("PUT", "/v2/acme/app/manifests/v1"),
        ] {
            let response = service.check_bearer(method, path, &token).await;
            assert_eq!(
                decision(&response),
                ("allow".into(), "allowed".into()),
                "v{version} {method} {path}"
            );
        }
        let response = service.check_bearer("GET", REPO, &token).await;
        assert_eq!(
            response_header(&response, "x-quay-authz-issuer").as_deref(),
            Some("entra")
        );
        assert_eq!(
            response_header(&response, "x-quay-authz-tenant").as_deref(),
            Some(TENANT)
        );
        assert_eq!(
            response_header(&response, "x-quay-authz-client").as_deref(),
            Some("backstage-client")
        );
        assert_eq!(
            response_header(&response, "x-quay-authz-user").as_deref(),
            Some("alice@example.com")
        );
        // write on acme/* does not reach admin, nor another namespace.
        let admin = service.check_bearer("DELETE", REPO, &token).await;
        assert_eq!(decision(&admin).1, "insufficient_scope");
        assert_eq!(http_status(&admin), 403);
        let other = service
            .check_bearer("GET", "/api/v1/repository/other/app", &token)
            .await;
        assert_eq!(decision(&other).1, "insufficient_scope");
    }
}

#[tokio::test]
async fn token_failures_are_denied_with_their_reason_codes() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, "unauthenticated: deny"), true).await;
    let roles = &["Quay.acme.read"];
    let mut expired = entra_claims(2, TENANT, TENANT, roles);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = entra_claims(2, TENANT, TENANT, roles);
    wrong_audience["aud"] = json!("api://someone-else");
    let mut unconfigured = entra_claims(2, TENANT, TENANT, roles);
    unconfigured["iss"] = json!("https://idp.unknown.example");
    let mint = |claims: &serde_json::Value| issuer.mint(SigningKeyKind::Rsa, claims).expect("mint");
    let valid = mint(&entra_claims(2, TENANT, TENANT, roles));
    let (header, payload, _) = {
        let mut parts = valid.split('.');
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), ())
    };
    let encode = |value: serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let alg_none = format!(
        "{}.{payload}.",
        encode(json!({"alg": "none", "kid": "rsa-1"}))
    );
    let hs256 = format!(
        "{}.{payload}.c2lnbmF0dXJl",
        encode(json!({"alg": "HS256", "kid": "rsa-1"}))
    );
    let tampered = format!(
        "{header}.{}.{}",
        encode(
            json!({"iss": entra_v2_iss(TENANT), "tid": TENANT, "aud": CLIENT_ID, "exp": now() + 60, "roles": ["Quay.acme.admin"]})
        ),
        valid.rsplit('.').next().unwrap_or("")
    );
    let cases = [
        (mint(&expired), "token_expired"),
        (mint(&wrong_audience), "audience_mismatch"),
        (
            mint(&entra_claims(2, TENANT, OTHER_TENANT, roles)),
            "tenant_mismatch",
        ),
        (mint(&unconfigured), "issuer_not_configured"),
        (alg_none, "algorithm_not_allowed"),
        (hs256, "algorithm_not_allowed"),
        (tampered, "bad_signature"),
        ("not-a-jwt".to_string(), "token_malformed"),
        ("a.b.c.d.e".to_string(), "token_encrypted"),
        ("x".repeat(20_000), "token_too_large"),
    ];
    for (token, reason) in cases {
        let response = service.check_bearer("GET", REPO, &token).await;
        assert_eq!(
            decision(&response),
            ("deny".into(), reason.into()),
            "{reason}"
        );
        assert_eq!(http_status(&response), 401, "{reason}");
        let challenge = response_header(&response, "www-authenticate").expect("challenge");
        assert!(challenge.contains(reason), "{challenge}");
        // Challenges explain the refusal but never repeat the token (or any 12 bytes of it).
        if token.len() >= 12 {
            assert!(
                !challenge.contains(&token[token.len() - 12..]),
                "token echoed: {challenge}"
            );
        }
    }
}

#[tokio::test]
async fn obo_token_with_app_id_uri_audience_is_accepted() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    // A v1 On-Behalf-Of token for a portal: aud is the App ID URI, here with a trailing slash.
    let mut claims = entra_claims(1, TENANT, TENANT, &["Quay.acme.read"]);
    claims["aud"] = json!("api://quay-api/");
    claims["scp"] = json!("user_impersonation");
    let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    let response = service
        .check_bearer("GET", "/api/v1/repository/acme/app/tag/", &token)
        .await;
    assert_eq!(decision(&response).0, "allow");
}

#[tokio::test]
async fn es256_tokens_and_generic_oidc_issuer_with_discovery() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = issuer
        .mint(SigningKeyKind::Ec, &dev_claims(&issuer, &["readers"]))
        .expect("mint");
    let pull = service
        .check_bearer("GET", "/v2/acme/app/manifests/latest", &token)
        .await;
    assert_eq!(decision(&pull).0, "allow");
    let push = service
        .check_bearer("PUT", "/v2/acme/app/manifests/latest", &token)
        .await;
    assert_eq!(decision(&push).1, "insufficient_scope");
    assert!(
        issuer.discovery_fetches() >= 1,
        "the oidc preset uses discovery"
    );
    // Entra allows RS256 only by default: an ES256 Entra token is refused.
    let entra = issuer
        .mint(
            SigningKeyKind::Ec,
            &entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]),
        )
        .expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &entra).await).1,
        "algorithm_not_allowed"
    );
}

#[tokio::test]
async fn rotated_key_is_accepted_without_restart_and_unpublished_key_is_unknown() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let old = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &old).await).0,
        "allow"
    );

    // The IdP publishes a new key and starts signing with it.
    let new_kid = issuer.rotate(SigningKeyKind::Rsa).expect("rotate");
    let new = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    assert!(new_kid.starts_with("key-"));
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &new).await).0,
        "allow"
    );

    // A token signed by a key the IdP never published stays unknown.
    let (forged, _) = issuer
        .mint_with_unpublished_key(SigningKeyKind::Rsa, &claims)
        .expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &forged).await).1,
        "unknown_key"
    );
}

#[tokio::test]
async fn unknown_kid_flood_causes_at_most_one_fetch_per_interval() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let before = issuer.jwks_fetches();
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let unknown = |kid: &str| {
        issuer
            .mint_with_kid(SigningKeyKind::Rsa, &claims, kid)
            .expect("mint")
    };
    let flood = |kids: Vec<String>| {
        let tokens = kids.iter().map(|kid| unknown(kid)).collect();
        service.check_bearers_concurrently("GET", REPO, tokens)
    };
    let random = |from: usize| (from..from + 100).map(|index| format!("random-{index}"));
    let reasons = flood(random(0).collect()).await;
    assert!(
        reasons.iter().all(|reason| reason == "unknown_key"),
        "{reasons:?}"
    );
    let fetches = issuer.jwks_fetches() - before;
    assert_eq!(fetches, 1, "{fetches} JWKS fetches for 100 unknown kids");

    // Within the minimum interval (30 s by default) the same kids again and new ones are all
    // answered from the key set that fetch left: none reaches the IdP.
    let reasons = flood(random(0).chain(random(1000)).collect()).await;
    assert!(
        reasons.iter().all(|reason| reason == "unknown_key"),
        "{reasons:?}"
    );
    assert_eq!(
        issuer.jwks_fetches() - before,
        1,
        "a refused kid reached the IdP"
    );
    // The flood did not hurt valid tokens.
    let valid = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &valid).await).0,
        "allow"
    );
}

#[tokio::test]
async fn requests_without_our_token_pass_through_with_identity_headers_removed() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    for headers in [
        vec![],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
        vec![("authorization", "Bearer opaque-quay-oauth-token")],
        vec![("x-quay-authz-user", "admin")],
    ] {
        let response = service.check("GET", REPO, &headers).await;
        assert_eq!(decision(&response).0, "passthrough", "{headers:?}");
        let Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(ok),
        ) = &response.http_response
        else {
            panic!("not OK")
        };
        assert!(
            ok.headers_to_remove
                .contains(&"x-quay-authz-user".to_string())
        );
        assert!(ok.headers.is_empty());
    }
    // UI paths are not ours either; ambiguous API paths are refused whoever asks.
    assert_eq!(
        decision(&service.check("GET", "/organization/acme", &[]).await).1,
        "not_protected"
    );
    let ambiguous = service
        .check("GET", "/api/v1/repository/acme%2Fapp", &[])
        .await;
    assert_eq!(decision(&ambiguous).1, "path_ambiguous");
    assert_eq!(http_status(&ambiguous), 400);
}

#[tokio::test]
async fn unauthenticated_deny_gives_challenges_for_api_and_registry() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, "unauthenticated: deny"), true).await;
    let api = service.check("GET", REPO, &[]).await;
    assert_eq!(http_status(&api), 401);
    assert_eq!(
        response_header(&api, "www-authenticate").as_deref(),
        Some("Bearer realm=\"quay.example.com\"")
    );
    let registry = service
        .check("GET", "/v2/acme/app/manifests/latest", &[])
        .await;
    assert_eq!(http_status(&registry), 401);
    assert_eq!(
        response_header(&registry, "www-authenticate").as_deref(),
        Some(
            "Bearer realm=\"https://quay.example.com/v2/auth\",service=\"quay.example.com\",scope=\"repository:acme/app:pull\""
        )
    );
}

#[tokio::test]
async fn unknown_api_route_is_denied_for_valid_tokens() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = entra_token(&issuer, &["Quay.acme.admin"]);
    let response = service
        .check_bearer("GET", "/api/v1/not/a/route", &token)
        .await;
    assert_eq!(decision(&response).1, "route_not_classified");
    assert_eq!(http_status(&response), 403);
}

#[tokio::test]
async fn readiness_waits_for_keys_and_unreachable_idp_fails_closed() {
    // An issuer whose keys live on a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let config = format!(
        r#"
quay: {{service: quay.example.com, realm: "https://quay.example.com/v2/auth"}}
jwks: {{fetch_timeout_seconds: 1}}
issuers:
  - name: entra
    preset: entra
    tenants: [{TENANT}]
    audiences: [api://quay-api]
    jwks_uri: http://127.0.0.1:{port}/keys
    allow_insecure_http: true
"#
    );
    let service = TestService::start(&config, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = service.http_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("entra"), "{body}");
    assert_eq!(service.http_get("/healthz").await.0, 200);
    let issuer = start_issuer().await;
    let token = issuer
        .mint(SigningKeyKind::Rsa, &entra_claims(1, TENANT, TENANT, &[]))
        .expect("mint");
    let response = service.check_bearer("GET", REPO, &token).await;
    assert_eq!(decision(&response).1, "keys_unavailable");
    assert_eq!(http_status(&response), 503);
}

#[tokio::test]
async fn metrics_count_decisions_by_reason_and_issuer() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = entra_token(&issuer, &["Quay.acme.read"]);
    for _ in 0..3 {
        service.check_bearer("GET", REPO, &token).await;
    }
    service.check_bearer("PUT", REPO, &token).await;
    let (status, metrics) = service.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"quay_authz_decisions_total{decision="allow",issuer="entra",reason="allowed"} 3"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"quay_authz_decisions_total{decision="deny",issuer="entra",reason="insufficient_scope"} 1"#), "{metrics}");
    assert!(metrics.contains("quay_authz_check_duration_seconds_bucket"));
    assert!(metrics.contains(r#"quay_authz_jwks_fetches_total{issuer="entra",result="success"}"#));
    assert!(!metrics.contains(&token[..30]));
}

#[tokio::test]
async fn admin_status_and_grpc_health_report_key_sources() {
    use quay_authz::server::admin::proto::StatusRequest;
    use quay_authz::server::admin::proto::admin_client::AdminClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let mut admin = AdminClient::connect(format!("http://{}", service.running.admin_addr))
        .await
        .expect("admin connects");
    let status = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(status.ready);
    let entra = status
        .key_sources
        .iter()
        .find(|source| source.issuer == "entra")
        .expect("entra source");
    assert_eq!(entra.url, issuer.jwks_url());
    assert!(entra.required);
    assert_eq!(entra.key_ids, ["rsa-1", "ec-1"]);
    assert!(entra.last_error.is_empty());
    assert!(entra.key_set_age_seconds.is_some());

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", service.running.grpc_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("health connects");
    let mut health = HealthClient::new(channel);
    let mut serving = false;
    for _ in 0..40 {
        let answer = health
            .check(HealthCheckRequest {
                service: "envoy.service.auth.v3.Authorization".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        if answer.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "gRPC health reports SERVING once ready");
}

#[tokio::test]
async fn verified_token_cache_hits_and_never_outlives_its_key() {
    let issuer = start_issuer().await;
    // Refetch on every unknown kid, so the test can make the service see a new key set now.
    let service = TestService::start(
        &config_for(&issuer, "jwks: {min_refetch_interval_seconds: 0}"),
        true,
    )
    .await;
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    for _ in 0..3 {
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, &token).await).0,
            "allow"
        );
    }
    let (_, metrics) = service.http_get("/metrics").await;
    assert!(
        metrics.contains("quay_authz_token_cache_lookups_total{result=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("quay_authz_token_cache_entries 1"),
        "{metrics}"
    );

    // The IdP drops the key; an unknown kid makes the service fetch the new key set.
    issuer.remove_key("rsa-1");
    let new_kid = issuer.rotate(SigningKeyKind::Rsa).expect("rotate");
    let fresh = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &fresh).await).0,
        "allow",
        "new key {new_kid}"
    );
    // The cached token signed by the removed key no longer validates.
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &token).await).1,
        "unknown_key"
    );
}

/// Envoy with `headers_with_underscores_action: ALLOW` forwards `x_quay_authz_user`, and a
/// WSGI server folds `_` and `-` together: every spelling must be removed, allowed or not.
#[tokio::test]
async fn underscore_spellings_of_identity_headers_are_removed_on_allow_and_passthrough() {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = issuer
        .mint(
            SigningKeyKind::Rsa,
            &entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]),
        )
        .expect("mint");
    let bearer = format!("Bearer {token}");
    let spoofed = [
        ("x_quay_authz_user", "admin"),
        ("X_Quay_Authz_Groups", "admins"),
        ("x-quay_authz-extra", "1"),
    ];
    for (expected, authorization) in [("allow", Some(bearer.as_str())), ("passthrough", None)] {
        let mut headers = spoofed.to_vec();
        if let Some(authorization) = authorization {
            headers.push(("authorization", authorization));
        }
        let response = service.check("GET", REPO, &headers).await;
        assert_eq!(decision(&response).0, expected);
        let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
            panic!("not OK")
        };
        for (name, _) in spoofed {
            assert!(
                ok.headers_to_remove.iter().any(|removed| removed == name),
                "{expected}: {name} not removed: {:?}",
                ok.headers_to_remove
            );
        }
    }
}

/// Issue 10 item 3: an ID token (or a refresh/logout token) for the right audience is signed by
/// the same keys, so only what it says about itself tells it apart; it must not pass as an
/// access token unless the issuer opts in.
#[tokio::test]
async fn id_tokens_and_other_non_access_tokens_are_refused_unless_the_issuer_opts_in() {
    let issuer = start_issuer().await;
    let config = config_for(&issuer, "");
    let service = TestService::start(&config, true).await;
    let claims = dev_claims(&issuer, &["readers"]);
    let with = |name: &str, value: serde_json::Value| {
        let mut claims = claims.clone();
        claims[name] = value;
        claims
    };
    let mint = |claims: &serde_json::Value, typ: Option<&str>| {
        issuer
            .mint_with_typ(SigningKeyKind::Rsa, claims, typ)
            .expect("mint")
    };
    let refused = [
        ("header typ logout+jwt", mint(&claims, Some("logout+jwt"))),
        (
            "header typ dpop+jwt",
            mint(&claims, Some("application/dpop+jwt")),
        ),
        ("header typ JOSE", mint(&claims, Some("JOSE"))),
        (
            "Keycloak ID token",
            mint(&with("typ", json!("ID")), Some("JWT")),
        ),
        (
            "Keycloak refresh",
            mint(&with("typ", json!("Refresh")), Some("JWT")),
        ),
        (
            "Keycloak logout",
            mint(&with("typ", json!("Logout")), Some("JWT")),
        ),
        (
            "OIDC nonce",
            mint(&with("nonce", json!("n-0S6_WzA2Mj")), Some("JWT")),
        ),
    ];
    let accepted = [
        ("header typ JWT", mint(&claims, Some("JWT"))),
        ("header typ at+jwt", mint(&claims, Some("at+jwt"))),
        (
            "application/AT+JWT",
            mint(&claims, Some("application/AT+JWT")),
        ),
        ("no header typ", mint(&claims, None)),
        (
            "Keycloak access",
            mint(&with("typ", json!("Bearer")), Some("JWT")),
        ),
    ];
    for (what, token) in &refused {
        let response = service.check_bearer("GET", REPO, token).await;
        assert_eq!(
            decision(&response),
            ("deny".into(), "not_an_access_token".into()),
            "{what}"
        );
        assert_eq!(http_status(&response), 401, "{what}");
    }
    for (what, token) in &accepted {
        let response = service.check_bearer("GET", REPO, token).await;
        assert_eq!(decision(&response).0, "allow", "{what}");
    }

    // `accept_id_tokens: true` on the issuer takes its ID tokens as they are.
    let opted_in = config.replace(
        "    algorithms: [RS256, ES256]\n    allow_insecure_http: true\n",
        "    algorithms: [RS256, ES256]\n    allow_insecure_http: true\n    accept_id_tokens: true\n",
    );
    assert_ne!(opted_in, config, "the dev issuer entry was found");
    let service = TestService::start(&opted_in, true).await;
    for (what, token) in &refused {
        let response = service.check_bearer("GET", REPO, token).await;
        assert_eq!(
            decision(&response).0,
            "allow",
            "{what} with accept_id_tokens"
        );
    }
}

/// Valid tokens that no rule grants anything (any GitHub repository, any tenant of a
/// multi-tenant app) are verified and denied, but never cached: however many there are, they
/// neither push a granted token out of the cache nor grow it.
#[tokio::test]
async fn tokens_that_grant_nothing_do_not_evict_granted_tokens_from_the_cache() {
    let issuer = start_issuer().await;
    let service = TestService::start(
        &config_for(&issuer, "limits: {token_cache_entries: 8}"),
        true,
    )
    .await;
    let granted = entra_token(&issuer, &["Quay.acme.read"]);
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &granted).await).0,
        "allow"
    );
    for index in 0..100 {
        let mut claims = entra_claims(2, TENANT, TENANT, &[]);
        claims["jti"] = json!(format!("ungranted-{index}"));
        let ungranted = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, &ungranted).await).1,
            "insufficient_scope"
        );
    }
    assert_eq!(service.metric("quay_authz_token_cache_entries").await, 1.0);
    let hits = r#"quay_authz_token_cache_lookups_total{result="hit"}"#;
    let before = service.metric(hits).await;
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &granted).await).0,
        "allow"
    );
    assert_eq!(
        service.metric(hits).await,
        before + 1.0,
        "the granted token was evicted by tokens that grant nothing"
    );
}

/// `limits.token_cache_bytes` bounds the cache's memory whatever the entry count allows: with
/// room for a few entries only, a stream of distinct granted tokens keeps the estimated bytes
/// (exported as `quay_authz_token_cache_bytes`) under the bound, evicting as it goes, and every
/// token is still answered correctly.
#[tokio::test]
async fn the_token_cache_stays_within_its_byte_budget() {
    let issuer = start_issuer().await;
    let budget = 16 * 1024;
    let service = TestService::start(
        &config_for(
            &issuer,
            &format!("limits: {{token_cache_entries: 100000, token_cache_bytes: {budget}}}"),
        ),
        true,
    )
    .await;
    for index in 0..60 {
        let mut claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
        claims["jti"] = json!(format!("granted-{index}"));
        let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, &token).await).0,
            "allow"
        );
    }
    let entries = service.metric("quay_authz_token_cache_entries").await;
    let bytes = service.metric("quay_authz_token_cache_bytes").await;
    assert!(bytes <= budget as f64, "{bytes} estimated bytes > {budget}");
    assert!(
        (1.0..60.0).contains(&entries),
        "{entries} entries, {bytes} bytes"
    );
    assert!(
        service
            .metric("quay_authz_token_cache_evictions_total")
            .await
            >= 60.0 - entries,
        "room was made by evicting"
    );
}

/// `limits.max_token_bytes` is the first thing applied to a token: one over it is refused
/// before anything reads it, the cache's SHA-256 included.
#[tokio::test]
async fn an_oversized_token_is_refused_before_the_cache_hashes_it() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let oversized = format!("{}.{}.sig", "e".repeat(10_000), "e".repeat(10_000));
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &oversized).await).1,
        "token_too_large"
    );
    assert_eq!(
        service
            .metric(r#"quay_authz_token_cache_lookups_total{result="miss"}"#)
            .await,
        0.0,
        "the oversized token was looked up in the cache"
    );
}

/// A loopback server that redirects key fetches: `/same` to its own `/keys`, `/port` to the
/// development issuer's JWKS (same host, another port), `/host` to `127.0.0.2` on its own port,
/// `/scheme` to https on its own port. `/keys` serves `jwks`. Bound to 127.0.0.1 and, where
/// the system allows, 127.0.0.2 on the same port.
async fn redirecting_key_server(jwks: String, elsewhere: String) -> u16 {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let moved = |to: String| move || async move { (StatusCode::FOUND, [(header::LOCATION, to)]) };
    let app = axum::Router::new()
        .route("/same", get(moved("/keys".to_string())))
        .route("/port", get(moved(elsewhere)))
        .route("/host", get(moved(format!("http://127.0.0.2:{port}/keys"))))
        .route(
            "/scheme",
            get(moved(format!("https://127.0.0.1:{port}/keys"))),
        )
        .route(
            "/keys",
            get(move || async move {
                ([(header::CONTENT_TYPE, "application/json")], jwks).into_response()
            }),
        );
    if let Ok(second) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await {
        let app = app.clone();
        tokio::spawn(async move {
            let _ = axum::serve(second, app).await;
        });
    }
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

#[tokio::test]
async fn key_fetches_follow_no_redirect_to_another_scheme_host_or_port() {
    let issuer = start_issuer().await;
    let jwks = published_jwks(&issuer).await;
    let port = redirecting_key_server(jwks, issuer.jwks_url()).await;
    let entry = |name: &str| {
        format!(
            "  - name: {name}\n    issuer: https://{name}.example\n    audiences: [quay]\n    \
             jwks_uri: http://127.0.0.1:{port}/{name}\n    allow_insecure_http: true\n    \
             required: false\n"
        )
    };
    let config = format!(
        "quay: {{service: quay.example.com, realm: \"https://quay.example.com/v2/auth\"}}\n\
         jwks: {{fetch_timeout_seconds: 2}}\nissuers:\n{}{}{}{}rules:\n  - name: readers\n    \
         grant: [\"repository:acme/*:pull\"]\n",
        entry("same"),
        entry("port"),
        entry("host"),
        entry("scheme"),
    );
    let service = TestService::start(&config, false).await;
    let token = |name: &str| {
        issuer
            .mint(
                SigningKeyKind::Rsa,
                &json!({"iss": format!("https://{name}.example"), "aud": "quay", "sub": "ci",
                        "exp": now() + 600}),
            )
            .expect("mint")
    };
    let path = "/v2/acme/app/manifests/latest";
    // A redirect within the origin is followed.
    let same = service.check_bearer("GET", path, &token("same")).await;
    assert_eq!(decision(&same), ("allow".into(), "allowed".into()));
    // Another port, host or scheme: the keys behind it are never fetched.
    for name in ["port", "host", "scheme"] {
        let response = service.check_bearer("GET", path, &token(name)).await;
        assert_eq!(
            decision(&response),
            ("deny".into(), "keys_unavailable".into()),
            "{name}"
        );
        let pipeline = service.running.service.pipeline.load_full();
        let status = pipeline
            .key_sources()
            .find(|(issuer, _)| *issuer == name)
            .map(|(_, source)| source.status())
            .expect("source");
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("redirect refused"), "{name}: {error}");
    }
}

/// A verified-token cache hit reuses what was decided for the token when it was admitted
/// (issue 14 item 2): the grants and the `scopes` header text are the cached outcome's own,
/// shared, not rebuilt per Check; and what reaches Envoy is the same as on the first Check.
#[tokio::test]
async fn a_cache_hit_reuses_the_pre_rendered_grants_and_headers() {
    use quay_authz::authn::extract::RequestFacts;
    use quay_authz::model::clock::unix_now;
    use quay_authz::model::decision::Decision;

    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read", "Quay.team.write"]);
    let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    let facts = RequestFacts::described("GET".into(), REPO.into(), Some(token.clone()), None);
    let pipeline = service.running.service.pipeline.load_full();
    let granted = |decision: Decision| match decision {
        Decision::Allow { grants, .. } => grants,
        other => panic!("expected allow, got {other:?}"),
    };
    let first = granted(pipeline.decide(&facts, unix_now()).await);
    let second = granted(pipeline.decide(&facts, unix_now()).await);
    assert_eq!(
        &*first.header, "repo:read on acme/*,repo:write on team/*",
        "the scopes header, rendered from the grants"
    );
    assert!(
        std::sync::Arc::ptr_eq(&first.header, &second.header)
            && std::sync::Arc::ptr_eq(&first.grants, &second.grants),
        "a hit hands out the cached outcome's rendering, not a new one"
    );

    let first_response = service.check_bearer("GET", REPO, &token).await;
    let again = service.check_bearer("GET", REPO, &token).await;
    for response in [&first_response, &again] {
        assert_eq!(
            response_header(response, "x-quay-authz-scopes").as_deref(),
            Some("repo:read on acme/*,repo:write on team/*")
        );
        assert_eq!(
            response_header(response, "x-quay-authz-groups").as_deref(),
            Some("Quay.acme.read,Quay.team.write")
        );
    }
}
