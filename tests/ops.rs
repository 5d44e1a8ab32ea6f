//! Operations: every metric family after a set of Checks, the audit log's events and sampling,
//! environment overrides and the JSON Schema, and a graceful SIGTERM of the real binary with
//! Checks in flight.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::quay_authz;
use common::issuer::*;
use common::log_capture::{captured_events, captured_text};
use common::serve::ServeProcess;
use common::service::*;
use quay_authz::check::audit::AllowSampler;
use quay_authz::config::env;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::Value;

const REPO: &str = "/api/v1/repository/acme/app";
/// A hang guard, never a performance expectation.
const DEADLINE: Duration = Duration::from_secs(60);

/// A token of the Entra tenant with the app role `Quay.acme.read`.
fn acme_reader(issuer: &DevIssuer) -> String {
    entra_token(issuer, &["Quay.acme.read"])
}

/// A Check with a bearer token and Envoy's `x-request-id`.
async fn check_with_id(
    service: &TestService,
    method: &str,
    path: &str,
    token: &str,
    request_id: &str,
) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
    let authorization = format!("Bearer {token}");
    service
        .check(
            method,
            path,
            &[
                ("authorization", &authorization),
                ("x-request-id", request_id),
            ],
        )
        .await
}

// === Metrics ===

/// `/metrics` as series (`name{labels}` exactly as exposed) → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn series<'a>(metrics: &'a BTreeMap<String, f64>, name: &str) -> Vec<(&'a str, f64)> {
    metrics
        .iter()
        .filter(|(series, _)| series.as_str() == name || series.starts_with(&format!("{name}{{")))
        .map(|(series, value)| (series.as_str(), *value))
        .collect()
}

fn value(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    *metrics
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {metrics:#?}"))
}

#[tokio::test]
async fn every_metric_family_moves_as_checks_and_reloads_happen() {
    let issuer = start_issuer().await;
    let base = config_for(&issuer, "");
    let service = TestService::start(&base, true).await;
    let reader = acme_reader(&issuer);
    let mut expired_claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    expired_claims["exp"] = (now() - 3600).into();
    let expired = issuer
        .mint(SigningKeyKind::Rsa, &expired_claims)
        .expect("mint");

    let (_, before) = service.http_get("/metrics").await;
    let before = parse_metrics(&before);
    assert!(series(&before, "quay_authz_decisions_total").is_empty());

    // Two allows of one token (a cache miss, then a hit), a scope deny with it, an expired
    // token, and a request without credentials.
    for _ in 0..2 {
        assert_eq!(
            decision(&service.check_bearer("GET", REPO, &reader).await).0,
            "allow"
        );
    }
    let denied = service.check_bearer("DELETE", REPO, &reader).await;
    assert_eq!(decision(&denied).1, "insufficient_scope");
    let expired = service.check_bearer("GET", REPO, &expired).await;
    assert_eq!(decision(&expired).1, "token_expired");
    let anonymous = service.check("GET", REPO, &[]).await;
    assert_eq!(decision(&anonymous).1, "no_credentials");
    let (_, cached) = service.http_get("/metrics").await;
    assert_eq!(
        value(&parse_metrics(&cached), "quay_authz_token_cache_entries"),
        1.0
    );

    // Reloads: one applied, one rejected.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    let listen = "listen: {grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0}\n";
    std::fs::write(&path, format!("{listen}{base}")).expect("write");
    service.running.service.reload(&path).expect("good config");
    std::fs::write(&path, format!("{listen}{base}\nbogus: 1\n")).expect("write");
    service
        .running
        .service
        .reload(&path)
        .expect_err("bad config");

    let (status, text) = service.http_get("/metrics").await;
    assert_eq!(status, 200);
    let metrics = parse_metrics(&text);

    // Decisions by decision, reason and issuer: exactly what happened.
    assert_eq!(
        series(&metrics, "quay_authz_decisions_total"),
        [
            (
                r#"quay_authz_decisions_total{decision="allow",issuer="entra",reason="allowed"}"#,
                2.0
            ),
            (
                r#"quay_authz_decisions_total{decision="deny",issuer="entra",reason="insufficient_scope"}"#,
                1.0
            ),
            (
                r#"quay_authz_decisions_total{decision="deny",issuer="entra",reason="token_expired"}"#,
                1.0
            ),
            (
                r#"quay_authz_decisions_total{decision="passthrough",issuer="",reason="no_credentials"}"#,
                1.0
            ),
        ]
    );
    // Latency histogram: one observation per Check, by decision.
    for (kind, count) in [("allow", 2.0), ("deny", 2.0), ("passthrough", 1.0)] {
        assert_eq!(
            value(
                &metrics,
                &format!(r#"quay_authz_check_duration_seconds_count{{decision="{kind}"}}"#)
            ),
            count
        );
        assert_eq!(
            value(
                &metrics,
                &format!(
                    r#"quay_authz_check_duration_seconds_bucket{{decision="{kind}",le="+Inf"}}"#
                )
            ),
            count
        );
    }
    // Token cache: the first allow and the expired token missed; the second allow and the
    // scope deny (the same token) hit.
    let hits = value(
        &metrics,
        r#"quay_authz_token_cache_lookups_total{result="hit"}"#,
    );
    let misses = value(
        &metrics,
        r#"quay_authz_token_cache_lookups_total{result="miss"}"#,
    );
    assert_eq!((hits, misses), (2.0, 2.0), "{text}");
    // The applied reload's configuration starts with an empty cache (its grants may differ).
    assert_eq!(value(&metrics, "quay_authz_token_cache_entries"), 0.0);
    assert_eq!(
        value(&metrics, "quay_authz_token_cache_evictions_total"),
        0.0
    );
    // Key fetches and keys, per issuer and source.
    assert!(
        value(
            &metrics,
            r#"quay_authz_jwks_fetches_total{issuer="entra",result="success"}"#
        ) >= 1.0
    );
    let entra_source = format!(r#"{{issuer="entra",source="{}"}}"#, issuer.jwks_url());
    assert!(value(&metrics, &format!("quay_authz_jwks_keys{entra_source}")) >= 1.0);
    // Key-set age: one series per published key set, computed at scrape time.
    let ages = series(&metrics, quay_authz::metrics::KEY_SET_AGE);
    assert_eq!(ages.len(), 2, "entra and dev key sets: {ages:?}");
    let entra_age = value(
        &metrics,
        &format!("{}{entra_source}", quay_authz::metrics::KEY_SET_AGE),
    );
    assert!(
        (0.0..DEADLINE.as_secs_f64() * 10.0).contains(&entra_age),
        "{entra_age}"
    );
    // Reloads by result.
    assert_eq!(
        value(
            &metrics,
            r#"quay_authz_config_reloads_total{result="applied"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            r#"quay_authz_config_reloads_total{result="rejected"}"#
        ),
        1.0
    );
    // Build info with the git revision from build.rs.
    let revision = quay_authz::metrics::GIT_REVISION;
    assert!(!revision.is_empty());
    assert_eq!(
        value(
            &metrics,
            &format!(
                r#"quay_authz_build_info{{revision="{revision}",version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    if let Some(head) = git_head() {
        assert_eq!(revision, head, "build.rs records the checkout's HEAD");
    }
    // Labels stay bounded: no subject, no path, no token.
    assert!(!text.contains("alice"));
    assert!(!text.contains("/api/v1"));
    assert!(reader.split('.').all(|part| !text.contains(part)));
}

/// `HEAD` of this checkout, when it is one and the build was not given a revision.
fn git_head() -> Option<String> {
    if option_env!("QUAY_AUTHZ_GIT_REVISION").is_some() {
        return None;
    }
    let output = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

// === Audit log ===

/// Audit events (target `audit`) whose request id starts with `prefix`.
fn audit_events(prefix: &str) -> Vec<Value> {
    audit_events_in(&captured_text(), prefix)
}

fn audit_events_in(text: &str, prefix: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "audit")
        .filter(|event| {
            event["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(prefix))
        })
        .collect()
}

#[tokio::test]
async fn audit_events_carry_the_decision_facts_and_never_the_token() {
    captured_events();
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = acme_reader(&issuer);
    let allow = check_with_id(
        &service,
        "GET",
        "/api/v1/repository/acme/app?includeTags=true&secret=q",
        &token,
        "facts-allow",
    )
    .await;
    assert_eq!(decision(&allow).0, "allow");
    let deny = check_with_id(
        &service,
        "PUT",
        "/v2/acme/app/manifests/v1",
        &token,
        "facts-deny",
    )
    .await;
    assert_eq!(decision(&deny).1, "insufficient_scope");

    let events = audit_events("facts-");
    assert_eq!(events.len(), 2, "{events:#?}");
    let allow = &events[0];
    for (field, expected) in [
        ("decision", "allow"),
        ("reason", "allowed"),
        ("subject", "alice@example.com"),
        ("issuer", "entra"),
        ("tenant", TENANT),
        ("client", "backstage-client"),
        ("method", "GET"),
        ("path", "/api/v1/repository/acme/app"),
        ("required", "repo:read on acme/app"),
        ("rule", "team-roles"),
        ("request_id", "facts-allow"),
        ("level", "INFO"),
    ] {
        assert_eq!(allow[field], expected, "{field} in {allow}");
    }
    assert!(allow["latency_us"].is_u64(), "{allow}");
    let deny = &events[1];
    for (field, expected) in [
        ("decision", "deny"),
        ("reason", "insufficient_scope"),
        ("issuer", "entra"),
        ("method", "PUT"),
        ("path", "/v2/acme/app/manifests/v1"),
        ("required", "repo:write on acme/app"),
        ("request_id", "facts-deny"),
    ] {
        assert_eq!(deny[field], expected, "{field} in {deny}");
    }
    assert!(deny["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(deny["latency_us"].is_u64(), "{deny}");
    let everything = captured_text();
    // No part of the token: not its header, payload or signature.
    for part in token.split('.') {
        assert!(!everything.contains(part), "a token part reached the log");
    }
    assert!(
        !everything.contains("secret=q"),
        "the query string reached the log"
    );
}

/// Every header and the body of a deny, as one text.
fn deny_text(response: &envoy_types::pb::envoy::service::auth::v3::CheckResponse) -> String {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not a deny: {response:?}");
    };
    let mut text = String::new();
    for header in denied
        .headers
        .iter()
        .filter_map(|option| option.header.as_ref())
    {
        text.push_str(&format!("{}: {}\n", header.key, header.value));
    }
    text.push_str(&denied.body);
    if let Some(status) = &response.status {
        text.push_str(&status.message);
    }
    text
}

#[tokio::test]
async fn denies_tell_the_client_the_reason_and_the_operator_the_configuration() {
    captured_events();
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let mut wrong_audience = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    wrong_audience["aud"] = serde_json::json!("api://someone-else");
    let wrong_audience = issuer
        .mint(SigningKeyKind::Rsa, &wrong_audience)
        .expect("mint");
    // ES256 where the Entra entry allows only RS256.
    let wrong_algorithm = issuer
        .mint(
            SigningKeyKind::Ec,
            &entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]),
        )
        .expect("mint");
    let configuration = ["api://quay-api", CLIENT_ID, "entra", "RS256", TENANT];
    for (token, reason, id) in [
        (&wrong_audience, "audience_mismatch", "hide-aud"),
        (&wrong_algorithm, "algorithm_not_allowed", "hide-alg"),
    ] {
        for path in [REPO, "/v2/acme/app/manifests/latest"] {
            let response = check_with_id(&service, "GET", path, token, id).await;
            assert_eq!(decision(&response), ("deny".into(), reason.into()));
            let shown = deny_text(&response);
            assert!(shown.contains(reason), "{shown}");
            for configured in configuration {
                assert!(
                    !shown.contains(configured),
                    "{reason} on {path} shows the client {configured:?}:\n{shown}"
                );
            }
        }
    }
    let api = deny_text(&check_with_id(&service, "GET", REPO, &wrong_audience, "hide-aud").await);
    assert!(
        api.contains("request a token for this service"),
        "what to do: {api}"
    );

    // The operator sees it all: in the audit log…
    let events = audit_events("hide-aud");
    let detail = events[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("api://quay-api") && detail.contains(CLIENT_ID),
        "{events:#?}"
    );
    let events = audit_events("hide-alg");
    let detail = events[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("RS256") && detail.contains("entra"),
        "{detail}"
    );
    // … and in explain.
    let pipeline = service.running.service.pipeline.load_full();
    let facts = quay_authz::authn::extract::RequestFacts::described(
        "GET".into(),
        REPO.into(),
        Some(wrong_audience.clone()),
        None,
    );
    let explanation = quay_authz::check::explain::explain(&pipeline, &facts, now()).await;
    let text = explanation.to_text();
    assert!(
        text.contains("api://quay-api") && text.contains(CLIENT_ID),
        "{text}"
    );
    assert_eq!(explanation.reason, "audience_mismatch");
}

#[tokio::test]
async fn allow_sampling_follows_the_request_id_and_denies_are_always_logged() {
    captured_events();
    let issuer = start_issuer().await;
    let service = TestService::start(
        &config_for(&issuer, "audit: {allow_sample_rate: 0.5}"),
        true,
    )
    .await;
    let token = acme_reader(&issuer);
    let ids: Vec<String> = (0..40).map(|n| format!("sampled-{n:03}")).collect();
    for id in &ids {
        let allow = check_with_id(&service, "GET", REPO, &token, id).await;
        assert_eq!(decision(&allow).0, "allow");
        let deny = check_with_id(&service, "DELETE", REPO, &token, &format!("{id}-deny")).await;
        assert_eq!(decision(&deny).0, "deny");
    }

    let events = audit_events("sampled-");
    let logged = |kind: &str| -> Vec<String> {
        events
            .iter()
            .filter(|event| event["decision"] == kind)
            .filter_map(|event| event["request_id"].as_str().map(str::to_string))
            .collect()
    };
    // Every deny, whatever the rate.
    let denies = logged("deny");
    assert_eq!(denies.len(), ids.len(), "{denies:?}");
    // Exactly the allows a replica with the same rate would pick: the choice is a function of
    // the request id, so it can be predicted here.
    let replica = AllowSampler::new(0.5);
    let expected: Vec<String> = ids.iter().filter(|id| replica.keeps(id)).cloned().collect();
    assert_eq!(logged("allow"), expected);
    assert!(
        !expected.is_empty() && expected.len() < ids.len(),
        "these ids exercise both outcomes: {expected:?}"
    );
}

// === Environment overrides and the JSON Schema ===

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/config.yaml");

#[test]
fn environment_overrides_are_applied_and_shown_by_check_config() {
    let (code, stdout, stderr) = quay_authz(
        &["check-config", EXAMPLE],
        &[
            ("QUAY_AUTHZ_JWKS_FETCH_TIMEOUT_SECONDS", "7"),
            ("QUAY_AUTHZ_LISTEN_GRPC", "127.0.0.1:7191"),
            ("QUAY_AUTHZ_UNAUTHENTICATED", "deny"),
            ("QUAY_AUTHZ_HEADERS_REMOVE_AUTHORIZATION", "true"),
            ("QUAY_AUTHZ_AUDIT_ALLOW_SAMPLE_RATE", "0.25"),
            ("QUAY_AUTHZ_SHUTDOWN_GRACE_SECONDS", "3"),
            ("QUAY_AUTHZ_LOG", "warn"),
            ("QUAY_AUTHZ_SERVICE_PORT", "9191"),
            ("QUAY_AUTHZ_TYPO_SETTING", "1"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "listen: grpc 127.0.0.1:7191, http 0.0.0.0:9090",
        "unauthenticated: Deny",
        "remove_authorization true",
        "fetch_timeout 7s",
        "audit: allow_sample_rate 0.25",
        "shutdown_grace_seconds: 3",
        "environment overrides:",
        "  jwks.fetch_timeout_seconds = 7 (from QUAY_AUTHZ_JWKS_FETCH_TIMEOUT_SECONDS)",
        "  unauthenticated = deny (from QUAY_AUTHZ_UNAUTHENTICATED)",
        "warning: environment variable QUAY_AUTHZ_TYPO_SETTING is not a setting",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    // The binary's own variables and Kubernetes service links are not settings to warn about.
    assert!(!stdout.contains("QUAY_AUTHZ_LOG"), "{stdout}");
    assert!(!stdout.contains("QUAY_AUTHZ_SERVICE_PORT"), "{stdout}");

    // Without the environment, the file's values.
    let (code, stdout, _) = quay_authz(&["check-config", EXAMPLE], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("fetch_timeout 5s"), "{stdout}");
    assert!(!stdout.contains("environment overrides"), "{stdout}");
}

#[test]
fn a_bad_override_is_reported_with_its_variable() {
    let (code, _, stderr) = quay_authz(
        &["check-config", EXAMPLE],
        &[("QUAY_AUTHZ_JWKS_MAX_KEYS", "lots")],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "env QUAY_AUTHZ_JWKS_MAX_KEYS: expected a non-negative integer, got \"lots\""
        ),
        "{stderr}"
    );
    // A value of the right type that the configuration refuses names the variable too.
    let (code, _, stderr) = quay_authz(
        &["check-config", EXAMPLE],
        &[
            ("QUAY_AUTHZ_JWKS_MAX_KEYS", "0"),
            ("QUAY_AUTHZ_LISTEN_ADMIN", "0.0.0.0:9192"),
            ("QUAY_AUTHZ_PATHS_NON_API", "maybe"),
        ],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("env QUAY_AUTHZ_PATHS_NON_API: expected one of passthrough, deny"),
        "{stderr}"
    );
    let (code, _, stderr) = quay_authz(
        &["check-config", EXAMPLE],
        &[
            ("QUAY_AUTHZ_JWKS_MAX_KEYS", "0"),
            ("QUAY_AUTHZ_LISTEN_ADMIN", "0.0.0.0:9192"),
        ],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("jwks.max_keys (env QUAY_AUTHZ_JWKS_MAX_KEYS): must be positive"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listen.admin (env QUAY_AUTHZ_LISTEN_ADMIN): the admin API"),
        "{stderr}"
    );
}

#[test]
fn required_settings_can_come_from_the_environment_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "issuers:\n  - name: k\n    issuer: https://sso.example.com/realms/main\n    audiences: [quay]\n",
    )
    .expect("write");
    let path = path.to_string_lossy().into_owned();
    let (code, _, stderr) = quay_authz(&["check-config", &path], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("missing field `quay`"), "{stderr}");
    let (code, stdout, stderr) = quay_authz(
        &["check-config", &path],
        &[
            ("QUAY_AUTHZ_QUAY_SERVICE", "quay.internal"),
            ("QUAY_AUTHZ_QUAY_REALM", "https://quay.internal/v2/auth"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("quay: service quay.internal, realm https://quay.internal/v2/auth"),
        "{stdout}"
    );
}

const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config.schema.json");
const REGENERATE_SCHEMA: &str = "cargo run -q -- config-schema > deploy/config.schema.json";

#[test]
fn shipped_schema_is_the_generated_one() {
    let shipped = std::fs::read_to_string(SCHEMA_FILE).unwrap_or_default();
    assert!(
        shipped == env::schema_text(),
        "deploy/config.schema.json is out of date with the configuration types; regenerate it:\n    {REGENERATE_SCHEMA}"
    );
    // The binary prints the same thing.
    let (code, stdout, _) = quay_authz(&["config-schema"], &[]);
    assert_eq!(code, 0);
    assert_eq!(stdout, shipped);
}

#[test]
fn readme_lists_every_override() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = env::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's table of environment variables is out of date; replace it with the output of:\n    cargo run -q -- config-schema --env-table"
    );
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(SCHEMA_FILE).expect("deploy/config.schema.json"),
    )
    .expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn yaml_as_json(text: &str) -> Value {
    serde_yaml::from_str(text).expect("YAML")
}

#[test]
fn example_configs_validate_against_the_schema_and_mistakes_do_not() {
    let validator = validator();
    let example = yaml_as_json(&std::fs::read_to_string(EXAMPLE).expect("example"));
    let errors: Vec<String> = validator
        .iter_errors(&example)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    let quickstart = yaml_as_json(&config_for_schema());
    assert!(validator.is_valid(&quickstart));

    // What an editor should flag: a misspelt field, a wrong type, an unknown preset.
    for (mistake, edit) in [
        ("misspelt field", ("  max_keys: 100", "  max_key: 100")),
        (
            "string for a number",
            ("  max_keys: 100", "  max_keys: many"),
        ),
        ("unknown preset", ("preset: entra", "preset: azure")),
    ] {
        let text = format!(
            "{}\njwks:\n  max_keys: 100\n",
            std::fs::read_to_string(EXAMPLE).expect("example")
        )
        .replacen(edit.0, edit.1, 1);
        assert!(
            !validator.is_valid(&yaml_as_json(&text)),
            "{mistake} passed the schema"
        );
    }
}

/// The tests' own configuration shape, with the sections this branch adds.
fn config_for_schema() -> String {
    let mut text = String::from(
        "quay: {service: q, realm: https://q/v2/auth}\naudit: {allow_sample_rate: 0.1}\nshutdown_grace_seconds: 5\n",
    );
    text.push_str(
        "issuers:\n  - name: dev\n    issuer: http://127.0.0.1:1\n    audiences: [quay]\n    allow_insecure_http: true\n    tenants: any\n",
    );
    text
}

// === Graceful shutdown ===

/// The real binary, serving; its stderr (JSON logs) collected line by line.
struct Server {
    process: ServeProcess,
    grpc: String,
    http: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(config: &str) -> Server {
        Self::start_logging(config, "json")
    }

    /// Started with `--log-format` `format` (`json` or `text`).
    fn start_logging(config: &str, format: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).expect("write config");
        let process = ServeProcess::spawn(&path, format);
        let mut server = Server {
            process,
            grpc: String::new(),
            http: String::new(),
            _dir: dir,
        };
        let started = Instant::now();
        while server.grpc.is_empty() {
            if let Some(event) = server
                .events()
                .into_iter()
                .find(|e| e["message"] == "quay-authz serving")
            {
                server.grpc = event["grpc_addr"].as_str().unwrap_or_default().to_string();
                server.http = event["http_addr"].as_str().unwrap_or_default().to_string();
            }
            // Text: `… quay-authz serving grpc_addr=127.0.0.1:PORT http_addr=… …`.
            let serving = (format == "text")
                .then(|| {
                    server
                        .lines()
                        .into_iter()
                        .find(|line| line.contains("quay-authz serving"))
                })
                .flatten();
            if let Some(line) = serving {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|part| part.strip_prefix(&format!("{name}=")))
                        .unwrap_or_default()
                        .to_string()
                };
                server.grpc = field("grpc_addr");
                server.http = field("http_addr");
            }
            if let Ok(Some(status)) = server.process.child.try_wait() {
                panic!("quay-authz exited ({status}): {:#?}", server.lines());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no start: {:#?}",
                server.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn lines(&self) -> Vec<String> {
        self.process.lines()
    }

    fn events(&self) -> Vec<Value> {
        self.process.events()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.process.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill");
    }

    /// The exit code, or a panic after the deadline.
    fn wait_exit(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.process.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                started.elapsed() < DEADLINE,
                "quay-authz did not exit within {DEADLINE:?}: {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_escape_claim_values_so_a_username_cannot_forge_lines() {
    let issuer = start_issuer().await;
    let config = format!(
        "listen: {{grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0}}\n{}",
        config_for(&issuer, "")
    );
    let mut server = Server::start_logging(&config, "text");
    let forged = "2026-01-01T00:00:00.000000Z  INFO audit: decision=\"allow\" subject=forged-admin";
    let mut claims = dev_claims(&issuer, &["readers"]);
    claims["preferred_username"] = serde_json::json!(format!("bob\n{forged}\r\n{forged}"));
    claims["azp"] = serde_json::json!("ci client=forged");
    let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc),
    )
    .await
    .expect("connect");
    let answer = client
        .check(check_request(
            "GET",
            "/v2/acme/app/manifests/latest",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-request-id", "escape-1\nforged-line"),
            ],
        ))
        .await
        .expect("Check answers")
        .into_inner();
    assert_eq!(decision(&answer).0, "allow");
    let started = Instant::now();
    let audit_line = loop {
        if let Some(line) = server
            .lines()
            .into_iter()
            .find(|line| line.contains("audit:") && line.contains("escape-1"))
        {
            break line;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no audit line: {:#?}",
            server.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(), 0);
    let lines = server.lines();
    assert!(
        !lines
            .iter()
            .any(|line| line.starts_with("2026-01-01") || line.starts_with("forged-line")),
        "a claim or header forged a log line: {lines:#?}"
    );
    // One line holds the whole event, each value quoted and escaped where it needs it.
    assert!(
        audit_line.contains(r#"subject="bob\n2026-01-01T00:00:00.000000Z  INFO audit: decision=\"allow\" subject=forged-admin\r\n"#),
        "{audit_line}"
    );
    assert!(
        audit_line.contains(r#"client="ci client=forged""#),
        "{audit_line}"
    );
    assert!(
        audit_line.contains(r#"request_id="escape-1\nforged-line""#),
        "{audit_line}"
    );
    assert!(audit_line.contains("issuer=dev "), "{audit_line}");
}

/// NOT_SERVING, or a refused connection: either way no new Check is sent here.
async fn health_of(grpc: &str) -> Result<i32, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_checks_in_flight_then_exits_zero() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let issuer = start_issuer().await;
    let config = format!(
        "listen: {{grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0}}\n\
         jwks: {{min_refetch_interval_seconds: 0, fetch_timeout_seconds: 30}}\n\
         shutdown_grace_seconds: 45\n{}",
        config_for(&issuer, "")
    );
    let mut server = Server::start(&config);
    let started = Instant::now();
    while health_of(&server.grpc).await != Ok(ServingStatus::Serving as i32) {
        assert!(
            started.elapsed() < DEADLINE,
            "never SERVING: {:#?}",
            server.lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Checks that must wait for a JWKS fetch: their key is not published yet, and the issuer
    // holds the fetch. The key is published meanwhile, so the answer is a real allow.
    let claims = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    let (token, kid) = issuer
        .mint_with_unpublished_key(SigningKeyKind::Rsa, &claims)
        .expect("mint");
    issuer.publish(&kid);
    issuer.set_jwks_delay(Duration::from_secs(3));
    let fetches = issuer.jwks_fetches();
    let client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc),
    )
    .await
    .expect("connect");
    let checks: Vec<_> = (0..8)
        .map(|n| {
            let mut client = client.clone();
            let authorization = format!("Bearer {token}");
            let id = format!("in-flight-{n}");
            tokio::spawn(async move {
                client
                    .check(check_request(
                        "GET",
                        REPO,
                        &[("authorization", &authorization), ("x-request-id", &id)],
                    ))
                    .await
                    .map(|response| decision(response.get_ref()))
            })
        })
        .collect();
    // In flight: the refetch has reached the issuer, which is holding it, and every one of
    // the eight Checks has reached the server (each looked its token up in the cache and
    // missed). Without the second wait a loaded machine may not have sent them all before the
    // SIGTERM, and a Check the server never saw cannot be "finished in flight".
    while issuer.jwks_fetches() == fetches {
        assert!(started.elapsed() < DEADLINE, "no refetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    loop {
        let text = http
            .get(format!("http://{}/metrics", server.http))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        let metrics = parse_metrics(&text);
        let misses = metrics
            .get(r#"quay_authz_token_cache_lookups_total{result="miss"}"#)
            .copied()
            .unwrap_or_default();
        if misses >= 8.0 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "only {misses} Checks reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal(libc::SIGTERM);
    assert!(
        checks.iter().all(|check| !check.is_finished()),
        "the Checks finished before SIGTERM: the test would prove nothing"
    );

    // No new work is taken: health says NOT_SERVING or the port refuses.
    let started = Instant::now();
    loop {
        match health_of(&server.grpc).await {
            Ok(status) if status == ServingStatus::Serving as i32 => {
                assert!(started.elapsed() < DEADLINE, "still SERVING after SIGTERM");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(_) | Err(_) => break,
        }
    }

    // Every Check in flight got its real answer.
    for check in checks {
        let answer = tokio::time::timeout(DEADLINE, check)
            .await
            .expect("Check answered before the deadline")
            .expect("task");
        assert_eq!(
            answer.expect("a response, not a transport error"),
            ("allow".to_string(), "allowed".to_string())
        );
    }
    assert_eq!(server.wait_exit(), 0, "{:#?}", server.lines());
    let events = server.events();
    assert!(
        events.iter().any(|e| e["message"] == "shut down cleanly"),
        "{:#?}",
        server.lines()
    );
    // The binary's JSON audit events carry every field.
    let audit = audit_events_in(&server.lines().join("\n"), "in-flight-");
    assert_eq!(audit.len(), 8, "{:#?}", server.lines());
    for field in [
        "timestamp",
        "level",
        "target",
        "decision",
        "reason",
        "subject",
        "issuer",
        "tenant",
        "client",
        "method",
        "path",
        "required",
        "rule",
        "latency_us",
        "request_id",
    ] {
        assert!(
            audit[0].get(field).is_some(),
            "{field} missing from {}",
            audit[0]
        );
    }
    assert!(
        !server
            .lines()
            .join("\n")
            .contains(&token[token.len() - 20..])
    );
}
