//! Exchanged tokens' lifecycle (issue 13 item 3) through the public surface: a real server
//! with the bridge and `bridge.exchange`, tokens put into its store as the exchange endpoint
//! records them, then the real `quay-authz tokens` binary against the admin listener (list as
//! a table and as JSON, filters, revoke by jti and by principal, exit codes), the admin gRPC
//! API directly for its status codes, and the audit events of revocations field by field.

mod common;

use std::collections::BTreeSet;

use common::cli::quay_authz;
use common::issuer::{now, start_issuer};
use common::log_capture::{captured_events, captured_text};
use common::pki::rsa_key_file;
use common::service::TestService;
use quay_authz::dev::issuer::DevIssuer;
use quay_authz::server::admin::proto::admin_client::AdminClient;
use quay_authz::server::admin::proto::{
    ListTokensRequest, RevokePrincipalRequest, RevokeTokenRequest,
};
use quay_authz::store::IssuedToken;
use serde_json::{Value, json};
use tonic::transport::Channel;

/// `bridge.exchange` as configured (`None`: a bridge without exchange) and, with `bridge`
/// false, no bridge at all.
fn config(
    issuer: &DevIssuer,
    key: &std::path::Path,
    bridge: bool,
    exchange: Option<&str>,
) -> String {
    let bridge_section = if bridge {
        format!(
            "bridge:\n  issuer: https://quay-authz.example.com/bridge\n  audience: quay-authz\n  \
             signing_keys: [{}]\n{}",
            key.display(),
            exchange
                .map(|settings| format!("  exchange: {settings}\n"))
                .unwrap_or_default()
        )
    } else {
        String::new()
    };
    let upstream = if bridge {
        "    upstream: exchange\n    subject: \"gh:{claims.repository_owner_id}\"\n"
    } else {
        ""
    };
    format!(
        r#"
quay:
  service: quay.example.com
  realm: https://quay.example.com/v2/auth
{bridge_section}issuers:
  - name: gha
    issuer: {iss}
    audiences: [quay]
    allow_insecure_http: true
{upstream}rules:
  - name: acme-readers
    issuers: [gha]
    when: {{claims: {{repository_owner: acme}}}}
    grant: ["repository:acme/*:pull"]
"#,
        iss = issuer.issuer(),
    )
}

/// A running instance (with its issuer and key directory kept alive).
struct Instance {
    service: TestService,
    _issuer: DevIssuer,
    _keys: tempfile::TempDir,
}

impl Instance {
    async fn start(bridge: bool, exchange: Option<&str>) -> Instance {
        let issuer = start_issuer().await;
        let keys = tempfile::tempdir().expect("tempdir");
        let key = rsa_key_file(keys.path(), "bridge.pem");
        let service = TestService::start(&config(&issuer, &key, bridge, exchange), true).await;
        Instance {
            service,
            _issuer: issuer,
            _keys: keys,
        }
    }

    /// With the bridge and `bridge.exchange` (max lifetime 1800 s).
    async fn exchanging() -> Instance {
        Self::start(true, Some("{max_lifetime_seconds: 1800}")).await
    }

    fn admin(&self) -> String {
        self.service.running.admin_addr.to_string()
    }

    async fn admin_client(&self) -> AdminClient<Channel> {
        AdminClient::connect(format!("http://{}", self.admin()))
            .await
            .expect("admin API connects")
    }

    /// Records `token` as the exchange endpoint does after a mint.
    async fn record(&self, token: &IssuedToken) {
        self.service
            .running
            .service
            .token_store
            .record(token, now())
            .await
            .expect("the memory store records");
    }

    async fn is_revoked(&self, token: &IssuedToken, at: u64) -> bool {
        self.service
            .running
            .service
            .token_store
            .is_revoked(&token.jti, &token.principal, token.issued_at, at)
            .await
            .expect("the memory store answers")
    }

    /// `quay-authz tokens ARGS --admin <this instance>`: exit code, stdout, stderr.
    async fn tokens(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["tokens".to_string()];
        all.extend(args.iter().map(|arg| arg.to_string()));
        all.extend(["--admin".to_string(), self.admin()]);
        run_cli(all).await
    }
}

/// Runs the real binary off the runtime's threads (the server answers on them meanwhile).
async fn run_cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        quay_authz(&args, &[])
    })
    .await
    .expect("CLI task")
}

fn token(jti: &str, principal: &str, issuer: &str, scopes: &[&str], issued_at: u64) -> IssuedToken {
    IssuedToken {
        jti: jti.into(),
        principal: principal.into(),
        username: format!("user-{principal}"),
        source_issuer: issuer.into(),
        scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
        issued_at,
        expires_at: issued_at + 900,
    }
}

fn json(stdout: &str) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn jtis(tokens: &[Value]) -> Vec<&str> {
    tokens
        .iter()
        .map(|token| token["jti"].as_str().expect("jti"))
        .collect()
}

const LISTED_FIELDS: [&str; 8] = [
    "jti",
    "principal",
    "username",
    "source_issuer",
    "scopes",
    "issued_at",
    "expires_at",
    "store",
];

#[tokio::test]
async fn list_shows_live_tokens_as_a_table_and_as_json_with_exactly_the_documented_fields() {
    let instance = Instance::exchanging().await;
    let t = now() - 60;
    let first = token(
        "jti-list-1",
        "gh:4242",
        "gha",
        &["repo:read on acme/app", "repo:write on acme/lib"],
        t,
    );
    let second = token(
        "jti-list-2",
        "gh:4242",
        "ci",
        &["repo:read on acme/*"],
        t + 1,
    );
    let other = token(
        "jti-list-3",
        "gh:77",
        "gha",
        &["repo:read on beta/app"],
        t + 2,
    );
    let mut expired = token(
        "jti-list-old",
        "gh:4242",
        "gha",
        &["repo:read on acme/app"],
        t - 2000,
    );
    expired.expires_at = t - 1000;
    for token in [&first, &second, &other, &expired] {
        instance.record(token).await;
    }

    let (code, stdout, stderr) = instance.tokens(&["list"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["JTI", "PRINCIPAL", "ISSUER", "SCOPES", "ISSUED", "EXPIRES"]
    );
    let issued = quay_authz::model::clock::rfc3339_utc(t);
    let expires = quay_authz::model::clock::rfc3339_utc(t + 900);
    let row: Vec<&str> = lines[1]
        .split("  ")
        .filter(|cell| !cell.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        row,
        [
            "jti-list-1",
            "gh:4242",
            "gha",
            "repo:read on acme/app, repo:write on acme/lib",
            issued.as_str(),
            expires.as_str()
        ],
        "{stdout}"
    );
    // Oldest first; the expired token is gone.
    assert!(
        lines[2].starts_with("jti-list-2 ") && lines[3].starts_with("jti-list-3 "),
        "{stdout}"
    );
    assert!(!stdout.contains("jti-list-old"), "{stdout}");
    assert!(
        stderr.contains("3 live exchanged token(s) (store: memory)"),
        "{stderr}"
    );

    let (code, stdout, stderr) = instance.tokens(&["list", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let listed = json(&stdout);
    assert_eq!(jtis(&listed), ["jti-list-1", "jti-list-2", "jti-list-3"]);
    for entry in &listed {
        let fields: BTreeSet<&str> = entry
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, LISTED_FIELDS.into_iter().collect(), "{entry}");
    }
    assert_eq!(
        listed[0],
        serde_json::json!({
            "jti": "jti-list-1", "principal": "gh:4242", "username": "user-gh:4242",
            "source_issuer": "gha", "scopes": ["repo:read on acme/app", "repo:write on acme/lib"],
            "issued_at": issued, "expires_at": expires, "store": "memory",
        })
    );

    for (filter, expected) in [
        (
            vec!["--principal", "gh:4242"],
            vec!["jti-list-1", "jti-list-2"],
        ),
        (vec!["--issuer", "gha"], vec!["jti-list-1", "jti-list-3"]),
        (
            vec!["--principal", "gh:4242", "--issuer", "ci"],
            vec!["jti-list-2"],
        ),
        (vec!["--principal", "nobody"], vec![]),
    ] {
        let mut args = vec!["list", "--json"];
        args.extend(&filter);
        let (code, stdout, stderr) = instance.tokens(&args).await;
        assert_eq!(code, 0, "{filter:?}: {stderr}");
        assert_eq!(jtis(&json(&stdout)), expected, "{filter:?}");
    }
}

#[tokio::test]
async fn revoke_by_jti_revokes_that_token_only_and_an_unknown_jti_exits_1() {
    captured_events();
    let instance = Instance::exchanging().await;
    let t = now() - 10;
    let target = token(
        "jti-revoke-1",
        "gh:jti-owner",
        "gha",
        &["repo:read on acme/app"],
        t,
    );
    let kept = token(
        "jti-revoke-2",
        "gh:jti-owner",
        "gha",
        &["repo:read on acme/app"],
        t,
    );
    instance.record(&target).await;
    instance.record(&kept).await;

    let (code, stdout, stderr) = instance.tokens(&["revoke", "--jti", "jti-revoke-1"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("revoked:\n"), "{stdout}");
    assert!(
        stdout
            .lines()
            .nth(2)
            .is_some_and(|row| row.starts_with("jti-revoke-1 ")),
        "{stdout}"
    );
    assert!(instance.is_revoked(&target, now()).await);
    assert!(!instance.is_revoked(&kept, now()).await);
    let (_, stdout, _) = instance.tokens(&["list", "--json"]).await;
    assert_eq!(jtis(&json(&stdout)), ["jti-revoke-2"]);
    assert_eq!(
        instance
            .service
            .metric("quay_authz_token_revocations_total{kind=\"jti\"}")
            .await,
        1.0
    );

    // Revoked already, and never issued: refused with exit 1 and a message that says so.
    for jti in ["jti-revoke-1", "jti-never-issued"] {
        let (code, stdout, stderr) = instance.tokens(&["revoke", "--jti", jti]).await;
        assert_eq!(code, 1, "{jti}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains(
                "no live exchanged token has this jti (expired, already revoked or never issued)"
            ),
            "{stderr}"
        );
    }
    assert_eq!(
        instance
            .service
            .metric("quay_authz_token_revocations_total{kind=\"jti\"}")
            .await,
        1.0,
        "a refused revocation is not counted"
    );

    // The audit events, field by field: the revocation, then the refused attempts.
    let events: Vec<Value> = revoke_events()
        .into_iter()
        .filter(|event| {
            event["jti"]
                .as_str()
                .is_some_and(|jti| jti == "jti-revoke-1" || jti == "jti-never-issued")
        })
        .collect();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_revoke_event(
        &events[0],
        json!({"kind": "jti", "result": "revoked", "jti": "jti-revoke-1",
               "principal": "gh:jti-owner", "source_issuer": "gha", "count": 1}),
    );
    for (refused, jti) in events[1..].iter().zip(["jti-revoke-1", "jti-never-issued"]) {
        assert_revoke_event(
            refused,
            json!({"kind": "jti", "result": "not_found", "jti": jti,
                   "principal": "", "source_issuer": "", "count": 0}),
        );
    }
}

/// A `jti` is 16 random bytes in base64url, so one in 64 starts with `-`; a principal may too.
/// The CLI must take them as values, not as flags (seen failing: `unexpected argument '-R'`).
#[tokio::test]
async fn values_that_start_with_a_dash_are_revoked_and_listed() {
    let instance = Instance::exchanging().await;
    let t = now() - 10;
    let dashed = token(
        "-Rq3vZ0aBcD",
        "-gh:dash",
        "gha",
        &["repo:read on acme/app"],
        t,
    );
    let other = token(
        "-Rq3vZ0aBcE",
        "-gh:dash",
        "gha",
        &["repo:read on acme/app"],
        t,
    );
    instance.record(&dashed).await;
    instance.record(&other).await;

    let (code, stdout, stderr) = instance
        .tokens(&["list", "--principal", "-gh:dash", "--json"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(jtis(&json(&stdout)).len(), 2, "{stdout}");

    let (code, stdout, stderr) = instance.tokens(&["revoke", "--jti", "-Rq3vZ0aBcD"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(instance.is_revoked(&dashed, now()).await);
    assert!(!instance.is_revoked(&other, now()).await);

    let (code, stdout, stderr) = instance
        .tokens(&["revoke", "--principal", "-gh:dash"])
        .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(instance.is_revoked(&other, now()).await);
}

#[tokio::test]
async fn revoke_by_principal_revokes_all_it_holds_and_nobody_elses() {
    captured_events();
    let instance = Instance::exchanging().await;
    let t = now() - 10;
    let first = token(
        "jti-p-1",
        "gh:revoked-principal",
        "gha",
        &["repo:read on acme/app"],
        t - 5,
    );
    let second = token(
        "jti-p-2",
        "gh:revoked-principal",
        "ci",
        &["repo:write on acme/app"],
        t,
    );
    let someone_else = token(
        "jti-p-3",
        "gh:bystander",
        "gha",
        &["repo:read on acme/app"],
        t,
    );
    // Never recorded (say, minted by a replica whose index write was lost): the mark stops it.
    let unlisted = token("jti-p-unlisted", "gh:revoked-principal", "gha", &[], t);
    for token in [&first, &second, &someone_else] {
        instance.record(token).await;
    }

    // The mark is set at the revocation's own second, somewhere between these two.
    let before = now();
    let (code, stdout, stderr) = instance
        .tokens(&["revoke", "--principal", "gh:revoked-principal", "--json"])
        .await;
    let after = now();
    assert_eq!(code, 0, "{stderr}");
    let revoked = json(&stdout);
    assert_eq!(jtis(&revoked), ["jti-p-1", "jti-p-2"]);
    let fields: BTreeSet<&str> = revoked[0]
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, LISTED_FIELDS[..7].iter().copied().collect());

    let at = now();
    for token in [&first, &second, &unlisted] {
        assert!(instance.is_revoked(token, at).await, "{}", token.jti);
    }
    assert!(!instance.is_revoked(&someone_else, at).await);
    // Issued after the revocation: not revoked.
    let later = token("jti-p-later", "gh:revoked-principal", "gha", &[], at + 5);
    assert!(!instance.is_revoked(&later, at + 5).await);
    // The mark lasts bridge.exchange.max_lifetime_seconds (1800): no older token outlives it.
    assert!(instance.is_revoked(&unlisted, before + 1799).await);
    assert!(!instance.is_revoked(&unlisted, after + 1801).await);
    let (_, stdout, _) = instance.tokens(&["list", "--json"]).await;
    assert_eq!(jtis(&json(&stdout)), ["jti-p-3"]);

    // A principal holding nothing listed: still a success (the mark is set), said in text.
    let (code, stdout, stderr) = instance
        .tokens(&["revoke", "--principal", "gh:holds-nothing"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("revoked every token of gh:holds-nothing issued at or before "),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("(0 live):"), "{stdout}");
    assert_eq!(
        instance
            .service
            .metric("quay_authz_token_revocations_total{kind=\"principal\"}")
            .await,
        2.0
    );

    let events: Vec<Value> = revoke_events()
        .into_iter()
        .filter(|event| event["principal"] == "gh:revoked-principal")
        .collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_revoke_event(
        &events[0],
        json!({"kind": "principal", "result": "revoked", "jti": "",
               "principal": "gh:revoked-principal", "source_issuer": "ci,gha", "count": 2}),
    );
}

#[tokio::test]
async fn usage_errors_exit_2_and_an_unreachable_admin_api_is_named() {
    let instance = Instance::exchanging().await;
    for args in [
        vec!["revoke"],
        vec!["revoke", "--jti", "a", "--principal", "b"],
        // Rejected by the server (INVALID_ARGUMENT), reported as a usage error.
        vec!["revoke", "--jti", ""],
    ] {
        let (code, stdout, stderr) = instance.tokens(&args).await;
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
    }
    let (_, _, stderr) = instance.tokens(&["revoke", "--jti", ""]).await;
    assert!(stderr.contains("jti must not be empty"), "{stderr}");

    // A loopback port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    for command in [&["tokens", "list"][..], &["tokens", "revoke", "--jti", "x"]] {
        let mut args: Vec<String> = command.iter().map(|arg| arg.to_string()).collect();
        args.extend(["--admin".to_string(), address.clone()]);
        let (code, stdout, stderr) = run_cli(args).await;
        assert_eq!(code, 3, "{command:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("cannot reach the admin API at http://{address}"))
                && stderr.contains("Connection refused")
                && stderr.contains("listen.admin"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn admin_api_status_codes() {
    let instance = Instance::exchanging().await;
    let mut client = instance.admin_client().await;
    let long = "x".repeat(1025);
    let fits = "x".repeat(1024);
    for jti in ["", long.as_str(), "a\nb"] {
        let answer = client
            .revoke_token(RevokeTokenRequest { jti: jti.into() })
            .await;
        assert_eq!(code(answer), tonic::Code::InvalidArgument, "{jti:?}");
    }
    for principal in ["", long.as_str(), "p\u{1b}[2J"] {
        let answer = client
            .revoke_principal(RevokePrincipalRequest {
                principal: principal.into(),
            })
            .await;
        assert_eq!(code(answer), tonic::Code::InvalidArgument, "{principal:?}");
    }
    let answer = client
        .list_tokens(ListTokensRequest {
            principal: long.clone(),
            source_issuer: String::new(),
        })
        .await;
    assert_eq!(code(answer), tonic::Code::InvalidArgument);
    let answer = client
        .revoke_token(RevokeTokenRequest { jti: fits.clone() })
        .await;
    assert_eq!(
        code(answer),
        tonic::Code::NotFound,
        "1024 bytes are accepted"
    );
    let answer = client
        .revoke_principal(RevokePrincipalRequest { principal: fits })
        .await
        .expect("revoking a principal holding nothing succeeds")
        .into_inner();
    assert!(answer.tokens.is_empty());
    assert!(answer.revoked_before >= now() - 5 && answer.revoked_before <= now());
}

#[tokio::test]
async fn without_a_bridge_the_list_is_empty_and_revocation_is_refused() {
    let instance = Instance::start(false, None).await;
    let mut client = instance.admin_client().await;
    let listed = client
        .list_tokens(ListTokensRequest::default())
        .await
        .expect("list answers")
        .into_inner();
    assert!(listed.tokens.is_empty());
    assert_eq!(listed.store, "memory");
    let refused = client
        .revoke_token(RevokeTokenRequest { jti: "j".into() })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("token exchange is not configured"),
        "{refused:?}"
    );
    let refused = client
        .revoke_principal(RevokePrincipalRequest {
            principal: "p".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let (code, stdout, stderr) = instance.tokens(&["revoke", "--principal", "p"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("token exchange is not configured"),
        "{stderr}"
    );
    let (code, stdout, stderr) = instance.tokens(&["list"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "only the header: {stdout}");
}

#[tokio::test]
async fn a_bridge_without_exchange_still_revokes_for_the_longest_lifetime() {
    // Exchange turned off by a reload leaves the tokens minted before it live until they
    // expire: they stay listable and revocable; a principal's mark lasts 3600 s, the ceiling
    // of max_lifetime_seconds.
    let instance = Instance::start(true, None).await;
    let held = token(
        "jti-off-1",
        "gh:after-off",
        "gha",
        &["repo:read on acme/app"],
        now() - 10,
    );
    instance.record(&held).await;
    let (code, stdout, stderr) = instance.tokens(&["list", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(jtis(&json(&stdout)), ["jti-off-1"]);
    let before = now();
    let (code, _, stderr) = instance
        .tokens(&["revoke", "--principal", "gh:after-off"])
        .await;
    let after = now();
    assert_eq!(code, 0, "{stderr}");
    let unlisted = token("jti-off-2", "gh:after-off", "gha", &[], before - 1);
    assert!(instance.is_revoked(&unlisted, before + 3599).await);
    assert!(!instance.is_revoked(&unlisted, after + 3601).await);
}

/// Captured `token_revoke` audit events, in order.
fn revoke_events() -> Vec<Value> {
    captured_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "audit" && event["event"] == "token_revoke")
        .collect()
}

/// A `token_revoke` event has exactly the documented fields: `expected`'s values, and the admin
/// client's address (the CLI on this host) as `peer`.
fn assert_revoke_event(event: &Value, expected: Value) {
    let expected = expected.as_object().expect("an object of fields");
    for (field, value) in expected {
        assert_eq!(&event[field], value, "{field}: {event}");
    }
    assert!(
        event["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "peer: {event}"
    );
    let fields: BTreeSet<&str> = event
        .as_object()
        .expect("an event object")
        .keys()
        .map(String::as_str)
        .collect();
    let documented: BTreeSet<&str> = expected
        .keys()
        .map(String::as_str)
        .chain(["peer", "event", "target", "level", "timestamp"])
        .collect();
    assert_eq!(fields, documented, "{event}");
}

/// The status code of an admin API answer (`Ok` for a success).
fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}
