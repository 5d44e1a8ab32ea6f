//! Token exchange (RFC 8693) through the public surface: real HTTP requests to
//! `POST {bridge.exchange.path}` of an in-process quay-authz whose subject tokens come from a
//! real OIDC issuer on loopback; then the exchanged token on real gRPC Checks (allowed within
//! its scope ∩ today's policy, revoked, downscoped on `/v2/auth`); and the audit events, read
//! from the process's own JSON log, with the token absent from all of it.

mod common;

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::issuer::{CLIENT_ID, TENANT, entra_token, now, start_issuer};
use common::log_capture::{captured_events, captured_text};
use common::pki::rsa_key_file;
use common::service::{TestService, decision, http_status, response_header};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use quay_authz::config::Config;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::{Value, json};

const BRIDGE_ISSUER: &str = "https://quay-authz.example.com/bridge";
const BRIDGE_AUDIENCE: &str = "quay-authz";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const READ: &str = "/api/v1/repository/acme/app";
const WRITE: &str = "/api/v1/repository/acme/app/build/";

/// The bridge with `exchange` (`exchange_extra` inside it), a GitHub-like exchange issuer and
/// an Entra issuer that forwards (its tokens cannot be exchanged), and `rules`.
fn config(
    issuer: &DevIssuer,
    key: &std::path::Path,
    exchange: Option<&str>,
    rules: &str,
) -> String {
    let exchange = exchange
        .map(|extra| {
            format!(
                "  exchange: {{max_lifetime_seconds: 1800, default_lifetime_seconds: 600{extra}}}\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"
quay:
  service: quay.example.com
  realm: https://quay.example.com/v2/auth
bridge:
  issuer: {BRIDGE_ISSUER}
  audience: {BRIDGE_AUDIENCE}
  signing_keys: [{key}]
{exchange}issuers:
  - name: gha
    issuer: {iss}
    audiences: [quay]
    allow_insecure_http: true
    upstream: exchange
    subject: "gh:{{claims.repository_owner_id}}:{{claims.repository_id}}"
    username: "gh-{{claims.repository|slug}}"
  - name: entra
    preset: entra
    tenants: [{TENANT}]
    audiences: [api://quay-api, {CLIENT_ID}]
    jwks_uri: {jwks}
    allow_insecure_http: true
rules:
{rules}"#,
        key = key.display(),
        iss = issuer.issuer(),
        jwks = issuer.jwks_url(),
    )
}

const RULES: &str = r#"  - name: acme-ci
    issuers: [gha]
    when: {claims: {repository_owner: acme}}
    grant: ["repository:acme/*:pull,push", "repo:read on tools/cli"]
  - name: entra-readers
    issuers: [entra]
    grant: ["repo:read on acme/*"]
"#;

struct Setup {
    issuer: DevIssuer,
    key: PathBuf,
    _dir: tempfile::TempDir,
    service: TestService,
}

async fn start(exchange: Option<&str>) -> Setup {
    let issuer = start_issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rsa_key_file(dir.path(), "bridge.pem");
    let service = TestService::start(&config(&issuer, &key, exchange, RULES), true).await;
    Setup {
        issuer,
        key,
        _dir: dir,
        service,
    }
}

/// A GitHub-Actions-shaped token; `repository_id` names the principal (`gh:4242:<id>`).
fn gha_token(issuer: &DevIssuer, owner: &str, repository_id: &str, exp_in: i64) -> String {
    let now = now() as i64;
    let claims = json!({
        "iss": issuer.issuer(), "aud": "quay", "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": format!("{owner}/app"), "repository_owner": owner,
        "repository_owner_id": "4242", "repository_id": repository_id,
        "iat": now - 10, "exp": now + exp_in,
    });
    issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint")
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.service.running.http_addr)
    }

    async fn post(&self, body: String, headers: &[(&str, &str)]) -> Answer {
        let mut request = reqwest::Client::new()
            .post(self.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read_answer(request.send().await.expect("HTTP answers")).await
    }

    /// Exchanges `subject` with `extra` parameters.
    async fn exchange(&self, subject: &str, extra: &[(&str, &str)]) -> Answer {
        let mut pairs = vec![
            ("grant_type", GRANT_TYPE),
            ("subject_token", subject),
            ("subject_token_type", JWT),
        ];
        pairs.extend_from_slice(extra);
        self.post(form(&pairs), &[]).await
    }

    /// Exchanges `subject` for `scope`; the token.
    async fn exchanged(&self, subject: &str, scope: &str) -> String {
        let answer = self.exchange(subject, &[("scope", scope)]).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }
}

async fn read_answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

fn assert_refused(answer: &Answer, status: u16, error: &str, reason: &str) {
    assert_eq!(
        (
            answer.status,
            answer.body["error"].as_str(),
            answer.body["reason"].as_str()
        ),
        (status, Some(error), Some(reason)),
        "{}",
        answer.text
    );
    assert!(
        answer.body["error_description"].is_string(),
        "{}",
        answer.text
    );
    assert_eq!(header(answer, "cache-control"), "no-store");
}

fn header(answer: &Answer, name: &str) -> String {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_exchange_issues_a_bridge_token_scoped_to_the_request_within_the_policy() {
    captured_events();
    let setup = start(Some("")).await;
    let subject = gha_token(&setup.issuer, "acme", "101", 600);

    let answer = setup
        .exchange(
            &subject,
            &[
                ("scope", "repo:read on acme/app"),
                ("audience", BRIDGE_AUDIENCE),
                ("requested_lifetime", "900"),
                ("requested_token_type", ACCESS_TOKEN),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(header(&answer, "cache-control"), "no-store");
    assert_eq!(header(&answer, "pragma"), "no-cache");
    assert_eq!(answer.body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["expires_in"], 900);
    assert_eq!(answer.body["scope"], "repo:read on acme/app");
    let token = answer.body["access_token"].as_str().expect("token");

    // A bridge token as Quay accepts it, plus `scope` and the source identity.
    let header_json: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header"))
            .expect("base64url"),
    )
    .expect("JSON");
    assert_eq!(
        (header_json["alg"].as_str(), header_json["typ"].as_str()),
        (Some("RS256"), Some("JWT"))
    );
    let claims = claims_of(token);
    assert_eq!(claims["iss"], BRIDGE_ISSUER);
    assert_eq!(claims["aud"], BRIDGE_AUDIENCE);
    assert_eq!(claims["azp"], BRIDGE_AUDIENCE);
    assert_eq!(claims["sub"], "gh:4242:101");
    assert_eq!(claims["preferred_username"], "gh-acme-app");
    assert_eq!(claims["scope"], "repo:read on acme/app");
    let iat = claims["iat"].as_u64().expect("iat");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 900));
    assert_eq!(claims["nbf"].as_u64(), Some(iat));
    assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() >= 16));
    assert_eq!(claims["quay_authz"]["issuer"], "gha");
    assert_eq!(claims["quay_authz"]["claims"]["repository_id"], "101");

    // Recorded in the store (never the token), and counted.
    let now = now();
    let live = setup
        .service
        .running
        .service
        .token_store
        .list(now)
        .await
        .expect("list");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].jti, claims["jti"].as_str().expect("jti"));
    assert_eq!(live[0].principal, "gh:4242:101");
    assert_eq!(live[0].scopes, ["repo:read on acme/app"]);
    assert_eq!(
        setup
            .service
            .metric("quay_authz_token_exchanges_total{result=\"issued\"}")
            .await,
        1.0
    );
    assert_eq!(
        setup
            .service
            .metric("quay_authz_exchanged_tokens_live")
            .await,
        1.0
    );

    // Broader than the policy: narrowed to what the policy gives inside it; no scope: all of
    // it; the default lifetime.
    let narrowed = setup
        .exchange(&subject, &[("scope", "repo:admin on acme/* super:user")])
        .await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.text);
    assert_eq!(
        narrowed.body["scope"],
        "repo:read on acme/* repo:write on acme/* repo:read on tools/cli"
    );
    let everything = setup.exchange(&subject, &[]).await;
    assert_eq!(
        everything.body["scope"],
        "repo:read on acme/* repo:write on acme/* repo:read on tools/cli"
    );
    assert_eq!(everything.body["expires_in"], 600);
    // Docker notation in the request; the answer in Quay notation.
    let docker = setup
        .post(
            form(&[
                ("grant_type", GRANT_TYPE),
                ("subject_token", &subject),
                ("subject_token_type", ACCESS_TOKEN),
                ("scope", "repository:acme/app:pull,push"),
            ]),
            &[],
        )
        .await;
    assert_eq!(
        docker.body["scope"], "repo:read on acme/app repo:write on acme/app",
        "{}",
        docker.text
    );
}

/// Form parameters, in order.
type Form = Vec<(&'static str, String)>;

#[tokio::test]
async fn every_refusal_has_its_oauth_error_reason_and_status() {
    captured_events();
    let setup = start(Some("")).await;
    let subject = gha_token(&setup.issuer, "acme", "102", 600);
    let base = |extra: &[(&'static str, String)]| {
        let mut pairs: Vec<(&str, String)> = vec![
            ("grant_type", GRANT_TYPE.into()),
            ("subject_token", subject.clone()),
            ("subject_token_type", JWT.into()),
        ];
        pairs.extend(extra.iter().cloned());
        pairs
    };
    let send = |pairs: Vec<(&'static str, String)>| {
        let setup = &setup;
        async move {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
            setup.post(form(&pairs), &[]).await
        }
    };

    let without = |name: &str| {
        base(&[])
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect::<Vec<_>>()
    };
    let mut cases: Vec<(Form, u16, &str, &str)> = vec![
        (
            vec![
                ("grant_type", "client_credentials".into()),
                ("subject_token", subject.clone()),
                ("subject_token_type", JWT.into()),
            ],
            400,
            "unsupported_grant_type",
            "unsupported_grant_type",
        ),
        (
            without("grant_type"),
            400,
            "invalid_request",
            "missing_parameter",
        ),
        (
            without("subject_token"),
            400,
            "invalid_request",
            "missing_parameter",
        ),
        (
            without("subject_token_type"),
            400,
            "invalid_request",
            "missing_parameter",
        ),
        (
            base(&[("subject_token", "x".into())]),
            400,
            "invalid_request",
            "duplicate_parameter",
        ),
        (
            base(&[
                ("scope", "repo:read on acme/app".into()),
                ("scope", "super:user".into()),
            ]),
            400,
            "invalid_request",
            "duplicate_parameter",
        ),
        (
            vec![
                ("grant_type", GRANT_TYPE.into()),
                ("subject_token", subject.clone()),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:saml2".into(),
                ),
            ],
            400,
            "invalid_request",
            "unsupported_token_type",
        ),
        (
            base(&[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:id_token".into(),
            )]),
            400,
            "invalid_request",
            "unsupported_token_type",
        ),
        (
            base(&[("requested_lifetime", "1801".into())]),
            400,
            "invalid_request",
            "lifetime_too_long",
        ),
        (
            base(&[("requested_lifetime", "soon".into())]),
            400,
            "invalid_request",
            "invalid_parameter",
        ),
        (
            base(&[("audience", "someone-else".into())]),
            400,
            "invalid_target",
            "audience_not_accepted",
        ),
        (
            base(&[("scope", "repo:read on".into())]),
            400,
            "invalid_scope",
            "scope_malformed",
        ),
        (
            base(&[("scope", "repo:read on other/app".into())]),
            400,
            "invalid_scope",
            "scope_not_granted",
        ),
    ];
    // The subject token: not a JWT, expired, of an issuer not configured, of an issuer that
    // does not exchange, of an owner the policy grants nothing.
    let with_subject = |token: String| {
        vec![
            ("grant_type", GRANT_TYPE.into()),
            ("subject_token", token),
            ("subject_token_type", JWT.into()),
        ]
    };
    let foreign = setup
        .issuer
        .mint(SigningKeyKind::Rsa, &json!({"iss": "https://elsewhere.example.com", "aud": "quay", "sub": "x", "exp": now() + 600}))
        .expect("mint");
    cases.extend([
        (
            with_subject("not-a-jwt".into()),
            400,
            "invalid_grant",
            "token_malformed",
        ),
        (
            with_subject(gha_token(&setup.issuer, "acme", "102", -120)),
            400,
            "invalid_grant",
            "token_expired",
        ),
        (
            with_subject(foreign),
            400,
            "invalid_grant",
            "issuer_not_configured",
        ),
        (
            with_subject(entra_token(&setup.issuer, &[])),
            400,
            "invalid_grant",
            "issuer_not_exchangeable",
        ),
        (
            with_subject(gha_token(&setup.issuer, "other", "103", 600)),
            400,
            "invalid_scope",
            "scope_not_granted",
        ),
    ]);
    for (pairs, status, error, reason) in cases {
        let description = format!("{pairs:?}");
        let answer = send(pairs).await;
        assert_refused(&answer, status, error, reason);
        assert!(
            !answer.text.contains(&subject),
            "{description}: the token is echoed"
        );
    }

    // An exchanged token is not a subject token: no chaining.
    let exchanged = setup.exchanged(&subject, "repo:read on acme/app").await;
    let answer = setup.exchange(&exchanged, &[]).await;
    assert_refused(
        &answer,
        400,
        "invalid_grant",
        "exchanged_token_not_accepted",
    );

    // Transport: another credential, the content type, the size, the method.
    let body = form(&[
        ("grant_type", GRANT_TYPE),
        ("subject_token", &subject),
        ("subject_token_type", JWT),
    ]);
    for (name, value) in [
        ("authorization", format!("Bearer {subject}")),
        ("authorization", format!("Basic {}", STANDARD.encode("a:b"))),
        ("cookie", "session=1".to_string()),
    ] {
        let answer = setup.post(body.clone(), &[(name, &value)]).await;
        assert_refused(&answer, 400, "invalid_request", "credential_not_allowed");
    }
    let client = reqwest::Client::new();
    let json_body = read_answer(
        client
            .post(setup.url("/oauth2/token"))
            .header("content-type", "application/json")
            .body(json!({"grant_type": GRANT_TYPE}).to_string())
            .send()
            .await
            .expect("HTTP"),
    )
    .await;
    assert_refused(
        &json_body,
        400,
        "invalid_request",
        "unsupported_content_type",
    );
    let oversized = setup
        .post(format!("{body}&pad={}", "a".repeat(70 * 1024)), &[])
        .await;
    assert_refused(&oversized, 413, "invalid_request", "body_too_large");
    let get = read_answer(
        client
            .get(setup.url("/oauth2/token"))
            .send()
            .await
            .expect("HTTP"),
    )
    .await;
    assert_refused(&get, 405, "invalid_request", "method_not_allowed");
    assert_eq!(header(&get, "allow"), "POST");

    // Counted by reason.
    assert_eq!(
        setup
            .service
            .metric("quay_authz_token_exchanges_total{result=\"token_expired\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_endpoint_is_off_without_exchange_configured() {
    let setup = start(None).await;
    let subject = gha_token(&setup.issuer, "acme", "104", 600);
    let answer = setup.exchange(&subject, &[]).await;
    assert_eq!(answer.status, 404, "{}", answer.text);
}

#[tokio::test]
async fn mints_per_principal_per_minute_are_bounded() {
    let setup = start(Some(", mints_per_principal_per_minute: 3")).await;
    // The counter's window is the clock's minute: a run that straddles two minutes is done
    // again with a fresh principal.
    for attempt in 0.. {
        let subject = gha_token(&setup.issuer, "acme", &format!("105{attempt}"), 600);
        let minute = now() / 60;
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(setup.exchange(&subject, &[]).await);
        }
        if now() / 60 != minute {
            continue;
        }
        let statuses: Vec<u16> = answers.iter().map(|answer| answer.status).collect();
        assert_eq!(statuses, [200, 200, 200, 429]);
        assert_refused(
            &answers[3],
            429,
            "temporarily_unavailable",
            "mint_rate_limited",
        );
        let retry: u64 = header(&answers[3], "retry-after")
            .parse()
            .expect("Retry-After");
        assert!((1..=60).contains(&retry), "{retry}");
        break;
    }
    // Another principal is not affected.
    let other = gha_token(&setup.issuer, "acme", "106", 600);
    assert_eq!(setup.exchange(&other, &[]).await.status, 200);
}

fn query_mutation(response: &CheckResponse) -> Vec<(String, String)> {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .query_parameters_to_set
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn an_exchanged_token_is_allowed_within_its_scope_and_todays_policy_until_revoked() {
    captured_events();
    let setup = start(Some("")).await;
    let service = &setup.service;
    let subject = gha_token(&setup.issuer, "acme", "107", 600);
    let token = setup.exchanged(&subject, "repo:read on acme/app").await;
    let jti = claims_of(&token)["jti"].as_str().expect("jti").to_string();

    // Within its scope: allowed, and Quay receives the exchanged token itself.
    let response = service.check_bearer("GET", READ, &token).await;
    assert_eq!(decision(&response), ("allow".into(), "allowed".into()));
    assert_eq!(
        response_header(&response, "authorization"),
        Some(format!("Bearer {token}"))
    );
    assert_eq!(
        response_header(&response, "x-quay-authz-subject"),
        Some("gh:4242:107".into())
    );
    // Beyond it, though the policy would allow a write: 403.
    let response = service.check_bearer("POST", WRITE, &token).await;
    assert_eq!(
        decision(&response),
        ("deny".into(), "insufficient_scope".into())
    );
    assert_eq!(http_status(&response), 403);
    // The IdP token itself may write (the policy grants it).
    let response = service.check_bearer("POST", WRITE, &subject).await;
    assert_eq!(decision(&response).0, "allow");

    // `/v2/auth`: Basic $oauthtoken:<token>, scopes cut to the token's scope.
    let basic = format!("Basic {}", STANDARD.encode(format!("$oauthtoken:{token}")));
    let response = service
        .check(
            "GET",
            "/v2/auth?service=quay.example.com&scope=repository:acme/app:pull,push",
            &[("authorization", &basic)],
        )
        .await;
    assert_eq!(decision(&response).0, "allow");
    assert_eq!(
        response_header(&response, "authorization"),
        Some(basic.clone())
    );
    assert_eq!(
        query_mutation(&response),
        [("scope".to_string(), "repository:acme/app:pull".to_string())]
    );

    // Revoked: 401 token_revoked on the next Check.
    let revoked = service
        .running
        .service
        .token_store
        .revoke(&jti, now())
        .await
        .expect("store");
    assert!(revoked.is_some());
    let response = service.check_bearer("GET", READ, &token).await;
    assert_eq!(decision(&response), ("deny".into(), "token_revoked".into()));
    assert_eq!(http_status(&response), 401);
    assert_eq!(
        service.metric("quay_authz_exchanged_tokens_live").await,
        0.0
    );
}

/// Applies `config_yaml` as a reload does (validated whole, then swapped in).
fn reload(service: &TestService, config_yaml: &str) {
    let text = format!(
        "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{config_yaml}"
    );
    service
        .running
        .service
        .apply(Config::parse(&text, "reload").expect("config"));
}

#[tokio::test]
async fn todays_policy_judges_an_exchanged_token_on_every_check() {
    let setup = start(Some("")).await;
    let service = &setup.service;
    let subject = gha_token(&setup.issuer, "acme", "108", 600);
    let token = setup.exchanged(&subject, "repo:read on acme/*").await;
    assert_eq!(
        decision(&service.check_bearer("GET", READ, &token).await).0,
        "allow"
    );

    // A reload narrows the rule: the token's scope still says acme/*, the policy no longer.
    let narrower = r#"  - name: acme-ci
    issuers: [gha]
    when: {claims: {repository_owner: acme}}
    grant: ["repository:acme/other:pull"]
"#;
    reload(
        service,
        &config(&setup.issuer, &setup.key, Some(""), narrower),
    );
    let response = service.check_bearer("GET", READ, &token).await;
    assert_eq!(
        decision(&response),
        ("deny".into(), "insufficient_scope".into())
    );
    assert_eq!(
        decision(
            &service
                .check_bearer("GET", "/api/v1/repository/acme/other", &token)
                .await
        )
        .0,
        "allow"
    );

    // The issuer no longer exchanges: its exchanged tokens stop working.
    let forwarding = config(&setup.issuer, &setup.key, Some(""), RULES).replace("    upstream: exchange\n    subject: \"gh:{claims.repository_owner_id}:{claims.repository_id}\"\n    username: \"gh-{claims.repository|slug}\"\n", "");
    reload(service, &forwarding);
    let response = service.check_bearer("GET", READ, &token).await;
    assert_eq!(
        decision(&response),
        ("deny".into(), "issuer_not_configured".into())
    );
}

#[tokio::test]
async fn a_bridge_token_minted_for_quay_is_not_a_client_credential() {
    let setup = start(Some("")).await;
    let service = &setup.service;
    let subject = gha_token(&setup.issuer, "acme", "109", 600);
    let response = service.check_bearer("GET", READ, &subject).await;
    let inline = response_header(&response, "authorization")
        .and_then(|value| value.strip_prefix("Bearer ").map(str::to_string))
        .expect("a bridge token for Quay");
    assert!(claims_of(&inline).get("quay_authz").is_none());
    let response = service.check_bearer("GET", READ, &inline).await;
    assert_eq!(decision(&response), ("deny".into(), "missing_claim".into()));
    assert_eq!(http_status(&response), 401);
    // Nor a subject token.
    let answer = setup.exchange(&inline, &[]).await;
    assert_refused(&answer, 400, "invalid_grant", "missing_claim");

    // A forged exchanged token (our iss and claims, another key): refused.
    let mut claims = claims_of(&setup.exchanged(&subject, "repo:read on acme/app").await);
    claims["scope"] = json!("super:user");
    let forged = setup
        .issuer
        .mint(SigningKeyKind::Rsa, &claims)
        .expect("mint");
    let response = service.check_bearer("GET", READ, &forged).await;
    assert_eq!(decision(&response).0, "deny");
    assert_eq!(http_status(&response), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_narrates_an_exchanged_token_and_its_revocation() {
    let setup = start(Some("")).await;
    let subject = gha_token(&setup.issuer, "acme", "111", 600);
    let token = setup.exchanged(&subject, "repo:read on acme/app").await;
    let jti = claims_of(&token)["jti"].as_str().expect("jti").to_string();
    let server = setup.service.running.admin_addr.to_string();
    let explain = |path: &'static str| {
        let (server, token) = (server.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            common::cli::quay_authz(
                &[
                    "explain", "--server", &server, "--token", &token, "--method", "POST",
                    "--path", path,
                ],
                &[],
            )
        })
    };
    let (code, stdout, stderr) = explain(WRITE).await.expect("explain");
    assert_eq!(code, 1, "{stdout}{stderr}");
    for expected in [
        "issuer     gha",
        "exchanged  a token of this service's token exchange (jti ",
        "principal gh:4242:111), scope [repo:read on acme/app]",
        "outside the exchanged token's scope",
        "decision   deny (insufficient_scope), HTTP 403",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    setup
        .service
        .running
        .service
        .token_store
        .revoke(&jti, now())
        .await
        .expect("store");
    let (_, stdout, _) = explain(READ).await.expect("explain");
    assert!(
        stdout.contains("decision   deny (token_revoked), HTTP 401"),
        "{stdout}"
    );
    for part in token.split('.') {
        assert!(!stdout.contains(part), "the token must never be printed");
    }
}

#[tokio::test]
async fn with_redis_unreachable_exchanged_tokens_fail_closed_and_idp_tokens_do_not() {
    let Some(mut redis) = common::redis::RedisServer::start() else {
        return;
    };
    let issuer = start_issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rsa_key_file(dir.path(), "bridge.pem");
    let text = config(&issuer, &key, Some(""), RULES).replace(
        "bridge:\n",
        &format!("bridge:\n  store: \"{}\"\n", redis.url()),
    );
    let setup = Setup {
        service: TestService::start(&text, true).await,
        issuer,
        key,
        _dir: dir,
    };
    let subject = gha_token(&setup.issuer, "acme", "112", 600);
    let token = setup.exchanged(&subject, "repo:read on acme/app").await;
    assert_eq!(
        decision(&setup.service.check_bearer("GET", READ, &token).await).0,
        "allow"
    );

    redis.stop();
    // The exchanged token needs the revocation list: 503, never an allow.
    let response = setup.service.check_bearer("GET", READ, &token).await;
    assert_eq!(
        decision(&response),
        ("deny".into(), "revocation_unavailable".into())
    );
    assert_eq!(http_status(&response), 503);
    // Nothing is issued that could not be listed and revoked.
    let answer = setup.exchange(&subject, &[]).await;
    assert_refused(
        &answer,
        503,
        "temporarily_unavailable",
        "revocation_unavailable",
    );
    assert_eq!(header(&answer, "retry-after"), "1");
    // The IdP token itself needs no store.
    assert_eq!(
        decision(&setup.service.check_bearer("GET", READ, &subject).await).0,
        "allow"
    );

    redis.restart();
    assert_eq!(
        decision(&setup.service.check_bearer("GET", READ, &token).await).0,
        "allow"
    );
    assert_eq!(setup.exchange(&subject, &[]).await.status, 200);
}

// === Audit log ===

fn exchange_events(principal: &str) -> Vec<Value> {
    captured_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "audit" && event["event"] == "token_exchange")
        .filter(|event| event["principal"] == principal)
        .collect()
}

#[tokio::test]
async fn every_exchange_is_an_audit_event_and_no_token_is_logged() {
    captured_events();
    let setup = start(Some("")).await;
    let subject = gha_token(&setup.issuer, "acme", "110", 600);
    let answer = setup
        .exchange(
            &subject,
            &[
                ("scope", "repo:read on acme/app"),
                ("requested_lifetime", "300"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let token = answer.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let claims = claims_of(&token);
    let refused = setup
        .exchange(&subject, &[("scope", "repo:read on other/app")])
        .await;
    assert_eq!(refused.status, 400);
    // A Check of the exchanged token logs like any decision.
    let response = setup
        .service
        .check(
            "GET",
            READ,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-request-id", "exchanged-check-110"),
            ],
        )
        .await;
    assert_eq!(decision(&response).0, "allow");

    let events = exchange_events("gh:4242:110");
    assert_eq!(events.len(), 2, "{events:#?}");
    let issued = &events[0];
    assert_eq!(issued["result"], "issued");
    assert_eq!(issued["username"], "gh-acme-app");
    assert_eq!(issued["source_issuer"], "gha");
    assert_eq!(issued["jti"], claims["jti"]);
    assert_eq!(issued["scopes"], "repo:read on acme/app");
    assert_eq!(issued["expires_at"], claims["exp"]);
    assert_eq!(issued["lifetime"], 300);
    let refusal = &events[1];
    assert_eq!(refusal["result"], "refused");
    assert_eq!(refusal["error"], "invalid_scope");
    assert_eq!(refusal["reason"], "scope_not_granted");
    assert_eq!(refusal["username"], "gh-acme-app");
    assert_eq!(refusal["source_issuer"], "gha");

    let text = captured_text();
    let check = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["request_id"] == "exchanged-check-110")
        .expect("the Check's audit event");
    assert_eq!(check["decision"], "allow");
    assert_eq!(check["subject"], "gh-acme-app");
    assert_eq!(check["issuer"], "gha");
    // Neither the subject token nor the exchanged one, nor their signatures, anywhere.
    for secret in [&subject, &token] {
        let signature = secret.rsplit('.').next().expect("signature");
        assert!(!text.contains(signature), "a token is in the log");
    }
}
