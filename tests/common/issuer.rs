#![allow(dead_code)]
//! A real OIDC issuer on loopback (quay-authz's development issuer) and claim builders.

use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::{Value, json};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const OTHER_TENANT: &str = "99999999-8888-7777-6666-555555555555";
pub const CLIENT_ID: &str = "6f1c2d3e-0000-4000-8000-000000000001";

pub async fn start_issuer() -> DevIssuer {
    DevIssuer::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("issuer starts")
}

/// The JWKS the issuer publishes, as served.
pub async fn published_jwks(issuer: &DevIssuer) -> String {
    reqwest::get(issuer.jwks_url())
        .await
        .expect("jwks")
        .text()
        .await
        .expect("body")
}

pub fn now() -> u64 {
    quay_authz::model::clock::unix_now()
}

pub fn entra_v1_iss(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

pub fn entra_v2_iss(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

/// Claims shaped like an Entra access token (Microsoft's access token reference).
pub fn entra_claims(version: u8, tenant_in_iss: &str, tid: &str, roles: &[&str]) -> Value {
    let now = now();
    let (iss, aud, client_claim) = match version {
        1 => (entra_v1_iss(tenant_in_iss), "api://quay-api", "appid"),
        _ => (entra_v2_iss(tenant_in_iss), CLIENT_ID, "azp"),
    };
    let mut claims = json!({
        "iss": iss, "aud": aud, "tid": tid, "ver": if version == 1 { "1.0" } else { "2.0" },
        "iat": now, "nbf": now, "exp": now + 3600,
        "oid": "00000000-0000-0000-0000-0000000000a1", "sub": "per-app-subject",
        "preferred_username": "alice@example.com", "upn": "alice@example.com",
        "roles": roles,
    });
    claims[client_claim] = json!("backstage-client");
    claims
}

/// An RS256 Entra v2 access token for the home tenant carrying `roles`.
pub fn entra_token(issuer: &DevIssuer, roles: &[&str]) -> String {
    issuer
        .mint(SigningKeyKind::Rsa, &entra_claims(2, TENANT, TENANT, roles))
        .expect("mint an Entra token")
}

/// Configuration with an Entra entry whose keys come from the loopback issuer while tokens
/// keep their real `iss`, and an OIDC entry for the issuer itself.
pub fn config_for(issuer: &DevIssuer, extra: &str) -> String {
    format!(
        r#"
quay:
  service: quay.example.com
  realm: https://quay.example.com/v2/auth
{extra}
issuers:
  - name: entra
    preset: entra
    tenants: [{TENANT}]
    audiences: [api://quay-api, {CLIENT_ID}]
    jwks_uri: {jwks}
    allow_insecure_http: true
  - name: dev
    issuer: {iss}
    audiences: [quay]
    algorithms: [RS256, ES256]
    allow_insecure_http: true
rules:
  - name: team-roles
    issuers: [entra]
    grant_from_groups:
      pattern: '^Quay\.(?P<ns>[a-z0-9_]+)\.(?P<role>read|write|admin)$'
      grant: ["repo:{{role}} on {{ns}}/*"]
  - name: dev-readers
    issuers: [dev]
    when: {{groups_any: [readers]}}
    grant: ["repository:acme/*:pull"]
"#,
        jwks = issuer.jwks_url(),
        iss = issuer.issuer(),
    )
}

pub fn dev_claims(issuer: &DevIssuer, groups: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": issuer.issuer(), "aud": "quay", "sub": "bob", "preferred_username": "bob",
        "groups": groups, "iat": now, "exp": now + 600,
    })
}
