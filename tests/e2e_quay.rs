//! End to end against a real Quay v3.18: the project's Envoy config in front of Quay, quay-authz
//! as its ext_authz service, and one loopback OIDC issuer that both trust (Quay as its login
//! provider, quay-authz as a configured issuer). One Quay serves every test of this binary
//! ([`SharedQuay`]); each test uses users and repositories of its own, and starts its own
//! quay-authz and Envoy.
//!
//! - `forward` (issue 12 item 1): Quay receives the caller's token and answers as that user; what
//!   quay-authz's policy does not grant never reaches Quay, superuser included.
//! - `strip`: Quay receives no `Authorization` and answers as anonymous.
//! - `exchange` and the keyless registry push (issue 12 items 2–5): Quay's second login provider
//!   is quay-authz's bridge; ignored until the bridge and `/v2/auth` branches are merged.
//!
//! Issue 10 item 0, the attack: a token whose grants are pull and push on `alice/*` sends
//! `DELETE //api/v1/repository/alice/hello`. Gunicorn keeps the slashes and Werkzeug strips them,
//! so Quay serves the delete view with the caller's full rights (alice is a Quay superuser). It
//! must be refused by quay-authz, and the repository must still be there.

mod common;

use common::envoy::{Envoy, require_envoy};
use common::issuer::now;
use common::quay::SharedQuay;
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
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let (quay, issuer) = (&shared.quay, &shared.issuer);
    let service = TestService::start(&config(issuer), true).await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), quay.port).await;
    let http = reqwest::Client::new();
    let token = alice_token(issuer);
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

/// A name no earlier run used: the shared Quay's database outlives test runs.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// A token of the shared issuer for Quay user `name` (`aud: quay`, Quay's `CLIENT_ID`).
fn user_token(issuer: &DevIssuer, name: &str, groups: &[&str]) -> String {
    let now = now();
    issuer
        .mint(
            SigningKeyKind::Rsa,
            &json!({
                "iss": issuer.issuer(), "aud": "quay", "sub": name,
                "preferred_username": name, "groups": groups,
                "iat": now, "exp": now + 600,
            }),
        )
        .expect("mint a user token")
}

/// quay-authz with one issuer (the shared one) in `mode`, granting `users` `user:read` and
/// `admins` pull on everything — never `super:user`.
fn mode_config(issuer: &DevIssuer, mode: &str) -> String {
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
    upstream: {mode}
rules:
  - name: users-read-themselves
    issuers: [dev]
    when: {{groups_any: [users]}}
    grant: ["user:read"]
  - name: admins-pull
    issuers: [dev]
    when: {{groups_any: [admins]}}
    grant: ["user:read", "repository:*/*:pull"]
"#,
        iss = issuer.issuer(),
    )
}

/// Waits until Quay's access log has a line containing `marker` (gunicorn writes one per
/// request once it is answered); a hang guard of 30 s, never a timing assertion.
async fn quay_logged(quay: &common::quay::Quay, marker: &str) -> String {
    for _ in 0..600 {
        let log = quay.log();
        if log.contains(marker) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "Quay never logged a request with {marker}: {}",
        quay.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_quay_answers_as_the_caller_and_never_sees_what_the_policy_denies() {
    let Some(bin) = require_envoy() else { return };
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let (quay, issuer) = (&shared.quay, &shared.issuer);
    let service = TestService::start(&mode_config(issuer, "forward"), true).await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), quay.port).await;
    let http = reqwest::Client::new();

    // A plain user: Quay receives the token unchanged (it is the only credential Quay could
    // know the user by), creates the user on first sight and answers as them.
    let name = unique("fwd");
    let token = user_token(issuer, &name, &["users"]);
    let response = http
        .get(envoy.url("/api/v1/user/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /api/v1/user/ through Envoy");
    assert_eq!(response.status(), 200, "{}", quay.log_tail());
    let body: serde_json::Value = response.json().await.expect("Quay's JSON");
    assert_eq!(body["username"], name.as_str(), "{body}");
    assert_eq!(body["anonymous"], false, "{body}");

    // `admin` is a Quay superuser (SUPER_USERS): straight at Quay, the token lists users.
    let admin = user_token(issuer, "admin", &["admins"]);
    let response = http
        .get(quay.url("/api/v1/superuser/users/"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("superuser API at Quay");
    assert_eq!(response.status(), 200, "{}", quay.log_tail());

    // Through Envoy the policy grants admin no `super:user`: refused by quay-authz, and Quay
    // never sees the request — neither the read nor the user creation.
    let denied_marker = unique("denied");
    let victim = unique("mallory");
    let response = http
        .get(envoy.url(&format!("/api/v1/superuser/users/?m={denied_marker}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("superuser read through Envoy");
    assert_eq!(response.status(), 403, "{}", envoy.log());
    let body: serde_json::Value = response.json().await.expect("quay-authz's JSON");
    assert_eq!(body["reason"], "insufficient_scope", "{body}");
    let response = http
        .post(envoy.url(&format!("/api/v1/superuser/users/?m={denied_marker}")))
        .bearer_auth(&admin)
        .json(&json!({"username": victim, "email": format!("{victim}@example.com")}))
        .send()
        .await
        .expect("superuser create through Envoy");
    assert_eq!(response.status(), 403, "{}", envoy.log());
    let body: serde_json::Value = response.json().await.expect("quay-authz's JSON");
    assert_eq!(body["reason"], "insufficient_scope", "{body}");

    // An allowed request after them: once Quay logged it, it would have logged the denied ones.
    let allowed_marker = unique("allowed");
    let response = http
        .get(envoy.url(&format!("/api/v1/user/?m={allowed_marker}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("allowed request through Envoy");
    assert_eq!(response.status(), 200, "{}", quay.log_tail());
    let log = quay_logged(quay, &allowed_marker).await;
    assert!(
        !log.contains(&denied_marker),
        "Quay saw a request quay-authz denied"
    );
    let response = http
        .get(quay.url(&format!("/api/v1/superuser/users/{victim}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("look the user up at Quay");
    assert_eq!(response.status(), 404, "{victim} was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_quay_receives_no_authorization_and_answers_as_anonymous() {
    let Some(bin) = require_envoy() else { return };
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let (quay, issuer) = (&shared.quay, &shared.issuer);
    let service = TestService::start(&mode_config(issuer, "strip"), true).await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), quay.port).await;
    let http = reqwest::Client::new();
    let name = unique("strip");
    let token = user_token(issuer, &name, &["users"]);

    // The token is one Quay accepts: straight at Quay it names the user.
    let response = http
        .get(quay.url("/api/v1/user/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /api/v1/user/ at Quay");
    assert_eq!(response.status(), 200, "{}", quay.log_tail());

    // Through Envoy quay-authz allows it (identity headers only) and Quay, with no
    // Authorization left, answers as it answers anonymous callers: 401 in its own words.
    let response = http
        .get(envoy.url("/api/v1/user/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /api/v1/user/ through Envoy");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("Quay's JSON");
    assert_eq!(status, 401, "{body}");
    assert!(body.get("reason").is_none(), "denied by quay-authz: {body}");
    assert_eq!(body["error_message"], "Requires authentication", "{body}");
}
