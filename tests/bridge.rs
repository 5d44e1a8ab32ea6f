//! The identity bridge through the public surface: an `upstream: exchange` issuer's allowed
//! Check carries `Authorization: Bearer <bridge token>` that passes every rule of Quay's SSO-JWT
//! path (QUAY-INTEGRATION.md §2, checked with the independent `jsonwebtoken` crate against the
//! JWKS quay-authz serves), the discovery document and JWKS on the HTTP listener, the mint
//! cache, and key rotation.

mod common;

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::issuer::{now, start_issuer};
use common::pki::rsa_key_file;
use common::service::{TestService, decision, http_status, response_header};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use quay_authz::config::Config;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::{Value, json};

const BRIDGE_ISSUER: &str = "https://quay-authz.example.com/bridge";
const BRIDGE_AUDIENCE: &str = "quay-authz";
const REPO: &str = "/api/v1/repository/acme/app";

fn config(issuer: &DevIssuer, keys: &[PathBuf]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
    format!(
        r#"
quay:
  service: quay.example.com
  realm: https://quay.example.com/v2/auth
bridge:
  issuer: {BRIDGE_ISSUER}
  audience: {BRIDGE_AUDIENCE}
  signing_keys: [{keys}]
  token_lifetime_seconds: 600
issuers:
  - name: gha
    issuer: {iss}
    audiences: [quay]
    allow_insecure_http: true
    upstream: exchange
    subject: "gh:{{claims.repository_owner_id}}:{{claims.repository_id}}"
    username: "gh-{{claims.repository|slug}}"
rules:
  - name: acme-readers
    issuers: [gha]
    when: {{claims: {{repository_owner: acme}}}}
    grant: ["repository:acme/*:pull"]
"#,
        keys = keys.join(", "),
        iss = issuer.issuer(),
    )
}

/// The loopback issuer, a key directory (kept alive with the service) and quay-authz with the
/// bridge configured.
async fn start_with_bridge() -> (DevIssuer, tempfile::TempDir, TestService) {
    let issuer = start_issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rsa_key_file(dir.path(), "bridge.pem");
    let service = TestService::start(&config(&issuer, &[key]), true).await;
    (issuer, dir, service)
}

/// A GitHub-Actions-shaped token of the loopback issuer.
fn gha_token(issuer: &DevIssuer, owner: &str, repository: &str, run: u64) -> String {
    let now = now();
    let claims = json!({
        "iss": issuer.issuer(), "aud": "quay", "sub": format!("repo:{repository}:ref:refs/heads/main"),
        "repository": repository, "repository_owner": owner,
        "repository_owner_id": "4242", "repository_id": "77", "run_id": run,
        "iat": now, "exp": now + 600,
    });
    issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint")
}

fn bridge_token(response: &CheckResponse) -> String {
    let header = response_header(response, "authorization").expect("Authorization is rewritten");
    header
        .strip_prefix("Bearer ")
        .expect("a bearer")
        .to_string()
}

fn segment(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("JWT segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

async fn get_json(service: &TestService, path: &str) -> (Value, String) {
    let response = reqwest::get(format!("http://{}{path}", service.running.http_addr))
        .await
        .expect("HTTP answers");
    assert_eq!(response.status(), 200, "{path}");
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.json().await.expect("JSON"), cache)
}

/// Verifies `token` as Quay's `OIDCLoginService.decode_user_jwt` does, rule by rule
/// (QUAY-INTEGRATION.md §2), with an independent JWT library and the served JWKS.
fn verify_as_quay(token: &str, jwks: &Value) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("header");
    // A JWT to Quay only when typ is JWT or at+jwt; kid required; RSA; RS256 or RS384.
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let kid = header.kid.expect("kid is required");
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|key| key["kid"] == kid.as_str())
        .expect("the kid is published");
    assert_eq!(jwk["kty"], "RSA");
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().expect("n"),
        jwk["e"].as_str().expect("e"),
    )
    .expect("RSA key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[BRIDGE_ISSUER]);
    validation.set_audience(&[BRIDGE_AUDIENCE]);
    validation.set_required_spec_claims(&["iat", "exp", "iss", "aud", "sub", "nbf"]);
    validation.validate_nbf = true;
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the bridge token verifies")
        .claims;
    // azp names an allowed client (OIDC_ALLOWED_CLIENTS = [CLIENT_ID]); never impersonated;
    // a jti; a lifetime of at most an hour.
    assert_eq!(claims["azp"], BRIDGE_AUDIENCE);
    assert!(claims.get("impersonated").is_none());
    assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() >= 16));
    let (iat, exp) = (
        claims["iat"].as_u64().expect("iat"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert!(exp > iat && exp - iat <= 3600);
    claims
}

#[tokio::test]
async fn an_exchange_issuers_allow_carries_a_bridge_token_quay_accepts() {
    let (issuer, _keys, service) = start_with_bridge().await;

    let caller = gha_token(&issuer, "acme", "Acme/App", 1);
    let response = service.check_bearer("GET", REPO, &caller).await;
    assert_eq!(decision(&response).0, "allow");
    let token = bridge_token(&response);
    assert_ne!(token, caller, "Quay never receives the caller's own token");

    // Discovery at {issuer path}/.well-known/openid-configuration, public and cacheable,
    // pointing at the JWKS; the JWKS served beside it.
    let (discovery, cache) = get_json(&service, "/bridge/.well-known/openid-configuration").await;
    assert!(cache.contains("max-age"), "{cache}");
    assert_eq!(discovery["issuer"], BRIDGE_ISSUER);
    assert_eq!(
        discovery["jwks_uri"],
        format!("{BRIDGE_ISSUER}/.well-known/jwks.json")
    );
    let (jwks, cache) = get_json(&service, "/bridge/.well-known/jwks.json").await;
    assert!(cache.contains("max-age"), "{cache}");
    // Quay's login page offers a button for every login provider; it leads to a page that
    // says nobody signs in here.
    assert_eq!(
        discovery["authorization_endpoint"],
        format!("{BRIDGE_ISSUER}/authorize")
    );
    let (status, text) = service.http_get("/bridge/authorize").await;
    assert_eq!(status, 400);
    assert!(text.contains("not an interactive login provider"), "{text}");

    let claims = verify_as_quay(&token, &jwks);
    assert_eq!(claims["sub"], "gh:4242:77");
    assert_eq!(claims["preferred_username"], "gh-acme-app");
    assert!(claims.get("email").is_none());
    // The identity headers name the caller as Quay will see it: its username and its `sub`.
    assert_eq!(
        response_header(&response, "x-quay-authz-user").as_deref(),
        Some("gh-acme-app")
    );
    assert_eq!(
        response_header(&response, "x-quay-authz-subject").as_deref(),
        Some("gh:4242:77")
    );
}

#[tokio::test]
async fn bridge_tokens_are_minted_once_per_principal_and_reused() {
    let (issuer, _keys, service) = start_with_bridge().await;

    let first = bridge_token(
        &service
            .check_bearer("GET", REPO, &gha_token(&issuer, "acme", "Acme/App", 1))
            .await,
    );
    // Another workflow run of the same repository: another IdP token, the same principal.
    let second = bridge_token(
        &service
            .check_bearer("GET", REPO, &gha_token(&issuer, "acme", "Acme/App", 2))
            .await,
    );
    assert_eq!(first, second, "reused until 80 % of its lifetime");
    assert_eq!(
        service
            .metric("quay_authz_bridge_mints_total{issuer=\"gha\"}")
            .await,
        1.0
    );
    assert_eq!(
        service
            .metric("quay_authz_bridge_mint_cache_lookups_total{result=\"hit\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_caller_the_policy_does_not_grant_or_the_templates_cannot_name_is_never_minted_for() {
    let (issuer, _keys, service) = start_with_bridge().await;

    let stranger = service
        .check_bearer("GET", REPO, &gha_token(&issuer, "evil", "evil/app", 1))
        .await;
    assert_eq!(decision(&stranger).0, "deny");
    assert!(response_header(&stranger, "authorization").is_none());

    // A repository name that slugs to nothing cannot be a Quay username: refused, not guessed.
    let unnamed = service
        .check_bearer("GET", REPO, &gha_token(&issuer, "acme", "///", 1))
        .await;
    assert_eq!(
        decision(&unnamed),
        ("deny".to_string(), "bridge_identity_invalid".to_string())
    );
    assert_eq!(http_status(&unnamed), 403);
    assert_eq!(
        service
            .metric("quay_authz_bridge_mints_total{issuer=\"gha\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_new_key_rotates_signing_and_the_old_key_stays_published() {
    let issuer = start_issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let old = rsa_key_file(dir.path(), "2026-11.pem");
    let service = TestService::start(&config(&issuer, std::slice::from_ref(&old)), true).await;
    let caller = gha_token(&issuer, "acme", "Acme/App", 1);
    let before = bridge_token(&service.check_bearer("GET", REPO, &caller).await);

    // Rotation: a second file added to the list, and the configuration reloaded.
    let new = rsa_key_file(dir.path(), "2026-12.pem");
    let reloaded = Config::parse(
        &format!(
            "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}",
            config(&issuer, &[old, new.clone()])
        ),
        "reload",
    )
    .expect("config");
    service.running.service.apply(reloaded);

    let after = bridge_token(&service.check_bearer("GET", REPO, &caller).await);
    assert_ne!(after, before, "new keys mint again");
    let (jwks, _) = get_json(&service, "/bridge/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
    // Tokens minted before still verify until they expire; the new one carries the new kid.
    verify_as_quay(&before, &jwks);
    verify_as_quay(&after, &jwks);
    assert_ne!(segment(&before, 0)["kid"], segment(&after, 0)["kid"]);

    // The key files are re-read in place too: a file rewritten with another key signs at
    // once (the watcher calls this every few seconds), a bad one keeps the previous keys.
    std::fs::write(&new, "not a key").expect("write");
    let pipeline = service.running.service.pipeline.load_full();
    let bridge = pipeline.bridge().expect("bridge configured");
    assert!(bridge.refresh_keys().is_err());
    assert_eq!(
        bridge_token(&service.check_bearer("GET", REPO, &caller).await),
        after,
        "a bad file changes nothing"
    );
    rsa_key_file(dir.path(), "2026-12.pem");
    assert!(bridge.refresh_keys().expect("usable"));
    let rewritten = bridge_token(&service.check_bearer("GET", REPO, &caller).await);
    assert_ne!(rewritten, after);
    let (jwks, _) = get_json(&service, "/bridge/.well-known/jwks.json").await;
    verify_as_quay(&rewritten, &jwks);
}

#[tokio::test]
async fn without_a_bridge_nothing_is_served_and_exchange_is_refused() {
    let issuer = start_issuer().await;
    let text = common::issuer::config_for(&issuer, "");
    let service = TestService::start(&text, true).await;
    let (status, _) = service.http_get("/.well-known/openid-configuration").await;
    assert_eq!(status, 404);
    let exchange = text.replace(
        "    algorithms: [RS256, ES256]\n",
        "    algorithms: [RS256, ES256]\n    upstream: exchange\n",
    );
    let error = Config::parse(&exchange, "t")
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("exchange needs the identity bridge"),
        "{error}"
    );
}

/// The mint cache, driven by an explicit clock: reused until 80 % of the lifetime (600 s here),
/// then minted again; a different principal gets its own token.
#[tokio::test]
async fn bridge_tokens_are_minted_again_at_80_percent_of_their_lifetime() {
    let (issuer, _keys, service) = start_with_bridge().await;
    let pipeline = service.running.service.pipeline.load_full();
    let bridge = pipeline.bridge().expect("bridge");
    let gha = pipeline.config.issuer("gha").expect("issuer");
    let identity = |owner_id: &str| gha_identity(&issuer, owner_id);
    let t0 = 1_900_000_000;
    let first = bridge.token_for(&identity("1"), gha, t0).expect("minted");
    assert_eq!(
        bridge
            .token_for(&identity("1"), gha, t0 + 479)
            .expect("reused"),
        first
    );
    let renewed = bridge
        .token_for(&identity("1"), gha, t0 + 480)
        .expect("minted");
    assert_ne!(renewed, first, "at 80 % of 600 s a fresh token");
    assert_eq!(segment(&renewed, 1)["iat"], t0 + 480);
    assert_eq!(segment(&renewed, 1)["exp"], t0 + 480 + 600);
    let other = bridge
        .token_for(&identity("2"), gha, t0 + 480)
        .expect("minted");
    assert_ne!(other, renewed);
    assert_eq!(segment(&other, 1)["sub"], "gh:2:7");
    assert_eq!(bridge.cached(), 2);
    // An identity the templates cannot name: the contract's reason, no token.
    let mut unnamed = identity("1");
    unnamed.claims.remove("repository_id");
    assert_eq!(
        bridge.token_for(&unnamed, gha, t0),
        Err(quay_authz::model::decision::Reason::BridgeIdentityInvalid)
    );
}

/// An identity as the pipeline verifies it for the `gha` issuer, owner `owner_id`.
fn gha_identity(issuer: &DevIssuer, owner_id: &str) -> quay_authz::model::identity::Identity {
    quay_authz::model::identity::Identity {
        issuer: "gha".into(),
        iss: issuer.issuer().into(),
        username: "gh-acme-app".into(),
        tenant: None,
        client: None,
        audiences: vec!["quay".into()],
        groups: vec![],
        claims:
            json!({"repository_owner_id": owner_id, "repository_id": "7", "repository": "acme/app"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        expires_at: now() + 3600,
        bridge_subject: None,
        exchanged: None,
    }
}

/// The mint cache is bounded: when full, expired entries make room; while none has expired a
/// new principal's token is minted but not remembered (the cache never grows past its bound).
#[tokio::test]
async fn the_mint_cache_is_bounded_and_expires_with_its_tokens() {
    let issuer = start_issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rsa_key_file(dir.path(), "bridge.pem");
    let text = config(&issuer, &[key]).replace(
        "  token_lifetime_seconds: 600\n",
        "  token_lifetime_seconds: 600\n  mint_cache_entries: 1\n",
    );
    let service = TestService::start(&text, true).await;
    let pipeline = service.running.service.pipeline.load_full();
    let bridge = pipeline.bridge().expect("bridge");
    let gha = pipeline.config.issuer("gha").expect("issuer");
    let t0 = 1_900_000_000;
    let first = bridge
        .token_for(&gha_identity(&issuer, "1"), gha, t0)
        .expect("minted");
    bridge
        .token_for(&gha_identity(&issuer, "2"), gha, t0)
        .expect("minted");
    assert_eq!(bridge.cached(), 1, "full: the second is not remembered");
    assert_eq!(
        bridge
            .token_for(&gha_identity(&issuer, "1"), gha, t0 + 1)
            .expect("reused"),
        first
    );
    // Once the first token has expired, its entry makes room for another principal.
    bridge
        .token_for(&gha_identity(&issuer, "2"), gha, t0 + 601)
        .expect("minted");
    assert_eq!(bridge.cached(), 1);
    let second = bridge
        .token_for(&gha_identity(&issuer, "2"), gha, t0 + 602)
        .expect("reused");
    assert_eq!(segment(&second, 1)["sub"], "gh:2:7");
    assert_eq!(segment(&second, 1)["iat"], t0 + 601);
}
