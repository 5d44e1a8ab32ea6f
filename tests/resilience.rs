//! The key cache while the IdP misbehaves: cached keys keep serving, Checks never hang, and
//! the IdP's cache lifetime is honoured.

mod common;

use std::time::{Duration, Instant};

use common::issuer::*;
use common::service::*;
use quay_authz::dev::issuer::SigningKeyKind;

const REPO: &str = "/api/v1/repository/acme/app";

/// Refetch on every unknown kid, so each test can make the service go to the IdP now.
const EAGER: &str = "jwks: {min_refetch_interval_seconds: 0, fetch_timeout_seconds: 1}";

#[tokio::test]
async fn idp_down_or_sending_garbage_later_keeps_cached_keys_serving() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, EAGER), true).await;
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    let fail = |on: bool| issuer.set_jwks_failure(on);
    let garbage = |on: bool| issuer.set_jwks_garbage(on);
    let misbehaviours: [&dyn Fn(bool); 2] = [&fail, &garbage];
    for misbehave in misbehaviours {
        misbehave(true);
        // An unknown kid forces a fetch, which fails: the old keys stay.
        let unknown = issuer
            .mint_with_kid(SigningKeyKind::Rsa, &claims, "not-there")
            .expect("mint");
        let before = issuer.jwks_fetches();
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, &unknown).await).1,
            "unknown_key"
        );
        assert!(
            issuer.jwks_fetches() > before,
            "the refetch reached the IdP"
        );
        // Fresh tokens, not yet in the verified-token cache, still verify with the kept keys.
        let mut fresh_claims = claims.clone();
        fresh_claims["jti"] = serde_json::json!(format!("{}", issuer.jwks_fetches()));
        let fresh = issuer
            .mint(SigningKeyKind::Rsa, &fresh_claims)
            .expect("mint");
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, &fresh).await).0,
            "allow"
        );
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, &token).await).0,
            "allow"
        );
        assert_eq!(service.http_get("/readyz").await.0, 200);
        misbehave(false);
    }
    let (_, metrics) = service.http_get("/metrics").await;
    assert!(
        metrics.contains(r#"quay_authz_jwks_fetches_total{issuer="entra",result="http_error"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"quay_authz_jwks_fetches_total{issuer="entra",result="invalid"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_idp_times_out_and_checks_do_not_hang() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, EAGER), true).await;
    issuer.set_jwks_delay(Duration::from_secs(30));
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let unknown = issuer
        .mint_with_kid(SigningKeyKind::Rsa, &claims, "not-there")
        .expect("mint");
    let started = Instant::now();
    let response = service.check_bearer("GET", REPO, &unknown).await;
    // Bounded by the 1 s fetch timeout, not the IdP's 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "Check took {:?}",
        started.elapsed()
    );
    assert_eq!(decision(&response).1, "unknown_key");
    let valid = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &valid).await).0,
        "allow"
    );
    let (_, metrics) = service.http_get("/metrics").await;
    assert!(metrics.contains(r#"result="unreachable"} 1"#), "{metrics}");
}

#[tokio::test]
async fn idp_down_at_start_becomes_ready_once_it_answers() {
    let issuer = start_issuer().await;
    issuer.set_jwks_failure(true);
    let service = TestService::start(&config_for(&issuer, EAGER), false).await;
    let (status, body) = service.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    issuer.set_jwks_failure(false);
    // The refresher retries with backoff (1 s, 2 s, …): readiness follows without a restart.
    service.wait_ready().await;
    let token = issuer
        .mint(
            SigningKeyKind::Rsa,
            &entra_claims(1, TENANT, TENANT, &["Quay.acme.read"]),
        )
        .expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &token).await).0,
        "allow"
    );
}

#[tokio::test]
async fn cache_control_max_age_is_honoured_within_bounds_and_discovery_is_cached() {
    for (header, expected) in [
        (Some("public, max-age=600"), 600),
        (Some("max-age=10"), 300),
        (Some("max-age=999999"), 86_400),
        (None, 3600),
    ] {
        let issuer = start_issuer().await;
        issuer.set_cache_control(header);
        let service = TestService::start(&config_for(&issuer, EAGER), true).await;
        let pipeline = service.running.service.pipeline.load_full();
        let (_, entra) = pipeline
            .key_sources()
            .find(|(name, _)| *name == "entra")
            .expect("entra");
        assert_eq!(
            entra.status().ttl,
            Some(Duration::from_secs(expected)),
            "{header:?}"
        );

        // The dev issuer uses discovery: refetches reuse the discovered jwks_uri.
        let claims = dev_claims(&issuer, &["readers"]);
        let discovery_before = issuer.discovery_fetches();
        let jwks_before = issuer.jwks_fetches();
        for kid in ["x1", "x2"] {
            let unknown = issuer
                .mint_with_kid(SigningKeyKind::Rsa, &claims, kid)
                .expect("mint");
            assert_eq!(
                decision(
                    &service
                        .check_bearer("GET", "/v2/acme/app/tags/list", &unknown)
                        .await
                )
                .1,
                "unknown_key"
            );
        }
        assert!(
            issuer.jwks_fetches() >= jwks_before + 2,
            "each unknown kid refetched the JWKS"
        );
        assert_eq!(
            issuer.discovery_fetches(),
            discovery_before,
            "discovery document refetched"
        );
    }
}

#[tokio::test]
async fn a_kid_refused_before_its_key_was_published_is_found_after_the_next_fetch() {
    let issuer = start_issuer().await;
    let config = config_for(&issuer, "jwks: {min_refetch_interval_seconds: 1}");
    let service = TestService::start(&config, true).await;
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let (token, kid) = issuer
        .mint_with_unpublished_key(SigningKeyKind::Rsa, &claims)
        .expect("mint");
    let before = issuer.jwks_fetches();
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &token).await).1,
        "unknown_key"
    );
    assert!(
        issuer.jwks_fetches() > before,
        "the refusal followed a fetch"
    );

    // The IdP rotates the key in. The refusal is remembered only until the interval ends:
    // the next unknown-kid fetch finds the key.
    issuer.publish(&kid);
    let mut outcome = String::new();
    for _ in 0..150 {
        outcome = decision(&service.check_bearer("GET", REPO, &token).await).0;
        if outcome == "allow" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcome, "allow", "the published key was never found");
}

async fn cache_hits(service: &TestService) -> f64 {
    service
        .metric(r#"quay_authz_token_cache_lookups_total{result="hit"}"#)
        .await
}

/// Anyone can send a token with a configured `iss` and a random `kid`, and each one may send
/// the service back to the IdP: those refetches return the same keys and must not flush the
/// verified-token cache. Only a key the IdP removed takes its tokens with it.
#[tokio::test]
async fn refetches_for_random_kids_keep_cached_tokens_and_drop_only_removed_keys() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, EAGER), true).await;
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    // One token signed by a key that stays, one by a key the IdP will remove.
    let staying = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    let leaving_kid = issuer.rotate(SigningKeyKind::Rsa).expect("rotate");
    let leaving = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    for token in [&staying, &leaving] {
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, token).await).0,
            "allow"
        );
    }

    let fetches = issuer.jwks_fetches();
    let random: Vec<String> = (0..20)
        .map(|index| {
            issuer
                .mint_with_kid(SigningKeyKind::Rsa, &claims, &format!("random-{index}"))
                .expect("mint")
        })
        .collect();
    for token in &random {
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, token).await).1,
            "unknown_key"
        );
    }
    assert!(
        issuer.jwks_fetches() >= fetches + 20,
        "each random kid refetched the key set"
    );

    // Both cached tokens are still answered from the cache: no verification, same keys.
    let hits = cache_hits(&service).await;
    for token in [&staying, &leaving] {
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, token).await).0,
            "allow"
        );
    }
    assert_eq!(
        cache_hits(&service).await,
        hits + 2.0,
        "refetches of the same keys flushed the verified-token cache"
    );

    // The IdP removes one key; the next refetch drops its token, and only its token.
    issuer.remove_key(&leaving_kid);
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &random[0]).await).1,
        "unknown_key"
    );
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &leaving).await).1,
        "unknown_key"
    );
    let hits = cache_hits(&service).await;
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &staying).await).0,
        "allow"
    );
    assert_eq!(cache_hits(&service).await, hits + 1.0);
}

/// An IdP that says its keys are good for a day must not keep a key it removed validating for
/// most of that day: the scheduled refresh comes within `jwks.max_refresh_interval_seconds`.
#[tokio::test]
async fn a_removed_key_stops_validating_within_the_maximum_refresh_interval() {
    let issuer = start_issuer().await;
    issuer.set_cache_control(Some("public, max-age=86400"));
    let kid = issuer.rotate(SigningKeyKind::Rsa).expect("rotate");
    // Unknown kids may not refetch during the test: only the scheduled refresh can see the
    // removal.
    let config = config_for(
        &issuer,
        "jwks: {max_refresh_interval_seconds: 1, min_refetch_interval_seconds: 3600}",
    );
    let service = TestService::start(&config, true).await;
    let pipeline = service.running.service.pipeline.load_full();
    let (_, entra) = pipeline
        .key_sources()
        .find(|(name, _)| *name == "entra")
        .expect("entra");
    assert_eq!(entra.status().ttl, Some(Duration::from_secs(86_400)));

    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    assert_eq!(
        decision(&service.check_bearer("GET", REPO, &token).await).0,
        "allow"
    );
    issuer.remove_key(&kid);
    // A hang guard of 10 s: the refresh is due within a second.
    let mut outcome = (String::new(), String::new());
    for _ in 0..400 {
        outcome = decision(&service.check_bearer("GET", REPO, &token).await);
        if outcome.0 != "allow" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(outcome.1, "unknown_key", "the removed key still validates");
}
