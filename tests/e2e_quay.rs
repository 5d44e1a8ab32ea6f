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
//!   is quay-authz's bridge.
//! - `exchanged_token_*` (issue 13): a token from the bridge's exchange endpoint, obtained
//!   through Envoy, is accepted by Quay within its scope, refused by quay-authz beyond it (never
//!   reaching Quay), works as a `docker login` password for skopeo, and stops working once
//!   revoked with `quay-authz tokens revoke`.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_slashes_delete_nothing_in_a_real_quay() {
    let Some((shared, _service, envoy)) = quay_behind_envoy("forward").await else {
        return;
    };
    let (quay, issuer) = (&shared.quay, &shared.issuer);
    let http = reqwest::Client::new();
    // A token both accept; alice is a Quay superuser in `.quay`'s config.
    let token = user_token(issuer, "alice", &["pushers"]);
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

/// `GET url` with `token` as the bearer: the status and the JSON body (`null` when not JSON).
async fn bearer_get(url: impl reqwest::IntoUrl, token: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// `method url` with `token` as the bearer and `body` as JSON: the status and the JSON answer
/// (`null` when not JSON).
async fn bearer_send(
    method: reqwest::Method,
    url: impl reqwest::IntoUrl,
    token: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Asserts that no request carrying `denied_marker` reached Quay: sends an allowed request with
/// `token` through `envoy` after them and waits until Quay logged it (it would have logged the
/// denied ones first).
async fn assert_quay_never_saw(
    quay: &common::quay::Quay,
    envoy: &Envoy,
    token: &str,
    denied_marker: &str,
) {
    let allowed_marker = unique("allowed");
    let (status, _) = bearer_get(
        envoy.url(&format!("/api/v1/user/?m={allowed_marker}")),
        token,
    )
    .await;
    assert_eq!(status, 200, "{}", quay.log_tail());
    let log = quay_logged(quay, &allowed_marker).await;
    assert!(
        !log.contains(denied_marker),
        "Quay saw a request quay-authz denied"
    );
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

/// quay-authz trusting the issuer Quay trusts (the shared one), in `mode`: `pushers` get pull
/// and push on `alice/*`, `users` `user:read`, `admins` pull on everything — nobody
/// `super:user`.
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
  - name: alice-pushers
    issuers: [dev]
    when: {{groups_any: [pushers]}}
    grant: ["repository:alice/*:pull,push"]
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

/// The shared Quay behind the deploy Envoy, asking a quay-authz in `mode` ([`mode_config`]), or
/// `None` when Envoy or Quay is not installed (the test is skipped with a notice).
async fn quay_behind_envoy(mode: &str) -> Option<(&'static SharedQuay, TestService, Envoy)> {
    let bin = require_envoy()?;
    let shared = SharedQuay::get()?;
    let service = TestService::start(&mode_config(&shared.issuer, mode), true).await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), shared.quay.port).await;
    Some((shared, service, envoy))
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
    let Some((shared, _service, envoy)) = quay_behind_envoy("forward").await else {
        return;
    };
    let (quay, issuer) = (&shared.quay, &shared.issuer);

    // A plain user: Quay receives the token unchanged (it is the only credential Quay could
    // know the user by), creates the user on first sight and answers as them.
    let name = unique("fwd");
    let token = user_token(issuer, &name, &["users"]);
    let (status, body) = bearer_get(envoy.url("/api/v1/user/"), &token).await;
    assert_eq!(status, 200, "{}", quay.log_tail());
    assert_eq!(body["username"], name.as_str(), "{body}");
    assert_eq!(body["anonymous"], false, "{body}");

    // `admin` is a Quay superuser (SUPER_USERS): straight at Quay, the token lists users.
    let admin = user_token(issuer, "admin", &["admins"]);
    let (status, _) = bearer_get(quay.url("/api/v1/superuser/users/"), &admin).await;
    assert_eq!(status, 200, "{}", quay.log_tail());

    // The superuser API answers user lookups (so the 404 at the end means "no such user").
    let (status, _) = bearer_get(quay.url("/api/v1/superuser/users/admin"), &admin).await;
    assert_eq!(status, 200, "{}", quay.log_tail());

    // Through Envoy the policy grants admin no `super:user`: refused by quay-authz, and Quay
    // never sees the request — neither the read nor the user creation.
    let denied_marker = unique("denied");
    let victim = unique("mallory");
    let (status, body) = bearer_get(
        envoy.url(&format!("/api/v1/superuser/users/?m={denied_marker}")),
        &admin,
    )
    .await;
    assert_eq!(status, 403, "{}", envoy.log());
    assert_eq!(body["reason"], "insufficient_scope", "{body}");
    let (status, body) = bearer_send(
        reqwest::Method::POST,
        envoy.url(&format!("/api/v1/superuser/users/?m={denied_marker}")),
        &admin,
        &json!({"username": victim, "email": format!("{victim}@example.com")}),
    )
    .await;
    assert_eq!(status, 403, "{}", envoy.log());
    assert_eq!(body["reason"], "insufficient_scope", "{body}");
    assert_quay_never_saw(quay, &envoy, &admin, &denied_marker).await;
    let (status, _) = bearer_get(
        quay.url(&format!("/api/v1/superuser/users/{victim}")),
        &admin,
    )
    .await;
    assert_eq!(status, 404, "{victim} was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_quay_receives_no_authorization_and_answers_as_anonymous() {
    let Some((shared, _service, envoy)) = quay_behind_envoy("strip").await else {
        return;
    };
    let (quay, issuer) = (&shared.quay, &shared.issuer);
    let name = unique("strip");
    let token = user_token(issuer, &name, &["users"]);

    // The token is one Quay accepts: straight at Quay it names the user.
    let (status, _) = bearer_get(quay.url("/api/v1/user/"), &token).await;
    assert_eq!(status, 200, "{}", quay.log_tail());

    // Through Envoy quay-authz allows it (identity headers only) and Quay, with no
    // Authorization left, answers as it answers anonymous callers: 401 in its own words.
    let (status, body) = bearer_get(envoy.url("/api/v1/user/"), &token).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.get("reason").is_none(), "denied by quay-authz: {body}");
    assert_eq!(body["error_message"], "Requires authentication", "{body}");
}

// --- exchange: quay-authz as Quay's second OIDC login provider (issue 12 items 2–6) --------

/// A fresh RSA-2048 signing key for the bridge, as PKCS#8 PEM in `dir/name`.
fn write_signing_key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    use aws_lc_rs::encoding::AsDer;
    use base64::Engine as _;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("generate an RSA key");
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("PKCS#8 DER");
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).expect("base64 is ASCII"))
        .collect();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        ),
    )
    .expect("write the signing key");
    path
}

/// The audience GitHub Actions tokens carry for this Quay (`actions/…` `audience:` input).
const GITHUB_AUDIENCE: &str = "quay-e2e";

/// A GitHub Actions OIDC token (GitHub's claim set) for repository `owner_id`/`repo_id`, signed
/// by the shared loopback issuer while carrying GitHub's real `iss`. Quay does not trust it.
fn github_token(issuer: &DevIssuer, owner_id: &str, repo_id: &str) -> String {
    let now = now();
    issuer
        .mint(
            SigningKeyKind::Rsa,
            &json!({
                "iss": "https://token.actions.githubusercontent.com", "aud": GITHUB_AUDIENCE,
                "sub": format!("repo:acme-{owner_id}/app-{repo_id}:ref:refs/heads/main"),
                "repository": format!("acme-{owner_id}/app-{repo_id}"),
                "repository_owner": format!("acme-{owner_id}"),
                "repository_id": repo_id, "repository_owner_id": owner_id,
                "ref": "refs/heads/main", "workflow": "release", "actor": "octocat",
                "event_name": "push", "runner_environment": "github-hosted",
                "iat": now, "nbf": now, "exp": now + 600,
            }),
        )
        .expect("mint a GitHub-shaped token")
}

/// The Quay username the bridge config below templates for a GitHub repository.
fn github_user(owner_id: &str, repo_id: &str) -> String {
    format!("gh-{owner_id}-{repo_id}")
}

/// quay-authz with the bridge on (the names of DESIGN.md "Identity bridge", as the shared Quay's
/// second login provider expects them), its token exchange endpoint on (`bridge.exchange`), and
/// a `github-actions` issuer in `exchange` mode whose tokens from repository owner `owner_id`
/// may read their Quay user and pull and push in the namespace of that user, repositories `app`
/// and `lib` only.
fn exchange_config(
    shared: &SharedQuay,
    signing_keys: &[&std::path::Path],
    owner_id: &str,
) -> String {
    let keys: Vec<String> = signing_keys
        .iter()
        .map(|path| format!("\"{}\"", path.display()))
        .collect();
    format!(
        r#"
quay:
  service: 127.0.0.1:{envoy_port}
  realm: http://127.0.0.1:{envoy_port}/v2/auth
bridge:
  issuer: {bridge_issuer}
  audience: {audience}
  signing_keys: [{keys}]
  token_lifetime_seconds: 300
  exchange: {{default_lifetime_seconds: 300}}
issuers:
  - name: github
    preset: github-actions
    audiences: [{GITHUB_AUDIENCE}]
    jwks_uri: {jwks}
    allow_insecure_http: true
    upstream: exchange
    subject: "gh:{{claims.repository_owner_id}}:{{claims.repository_id}}"
    username: "gh-{{claims.repository_owner_id}}-{{claims.repository_id}}"
rules:
  - name: ci-owner
    issuers: [github]
    when: {{claims: {{repository_owner_id: "{owner_id}"}}}}
    grant:
      - "user:read"
      - "repository:gh-{{claims.repository_owner_id}}-{{claims.repository_id}}/app:pull,push"
      - "repo:write on gh-{{claims.repository_owner_id}}-{{claims.repository_id}}/app"
      - "repository:gh-{{claims.repository_owner_id}}-{{claims.repository_id}}/lib:pull,push"
      - "repo:write on gh-{{claims.repository_owner_id}}-{{claims.repository_id}}/lib"
"#,
        envoy_port = shared.envoy_port,
        bridge_issuer = shared.bridge_issuer(),
        audience = common::quay::BRIDGE_AUDIENCE,
        keys = keys.join(", "),
        jwks = shared.issuer.jwks_url(),
    )
}

/// Looks `name` up with the superuser API straight at Quay: 200 when the user exists, 404 when not.
async fn quay_user_status(shared: &SharedQuay, name: &str) -> u16 {
    let admin = user_token(&shared.issuer, "admin", &["admins"]);
    let url = shared.quay.url(&format!("/api/v1/superuser/users/{name}"));
    bearer_get(url, &admin).await.0
}

/// quay-authz with the bridge on, listening where the shared Quay's second login provider looks
/// (one bridge at a time: the port is held for the test), signing with a fresh key, for a fresh
/// repository owner (the shared database outlives test runs).
struct BridgeRun {
    service: TestService,
    keys: tempfile::TempDir,
    key: std::path::PathBuf,
    owner_id: String,
    // Last: released once the service above is gone.
    _port: tokio::sync::MutexGuard<'static, ()>,
}

async fn start_bridge(shared: &'static SharedQuay) -> BridgeRun {
    let port = shared.bridge_lock().await;
    let keys = tempfile::tempdir().expect("a directory for the signing keys");
    let key = write_signing_key(keys.path(), "2026-11.pem");
    let owner_id = unique("").replace('x', "0");
    let service = common::service::start_with_http_port(
        shared.bridge_port,
        &exchange_config(shared, &[&key], &owner_id),
    )
    .await;
    BridgeRun {
        service,
        keys,
        key,
        owner_id,
        _port: port,
    }
}

/// The deploy Envoy in front of the shared Quay for a bridge run: Checks to `service`, and its
/// `/quay-authz/…` routes (discovery, JWKS, token exchange) to the bridge's HTTP port. On
/// `listen_port` when given (Quay's `SERVER_HOSTNAME`, for registry clients), else anywhere.
async fn bridge_envoy(
    bin: &std::path::Path,
    shared: &SharedQuay,
    service: &TestService,
    listen_port: Option<u16>,
) -> Envoy {
    let (grpc, quay) = (service.running.grpc_addr.port(), shared.quay.port);
    let bridge_http = [(
        common::envoy::DEPLOY_AUTHZ_HTTP_PORT,
        format!("port_value: {}", shared.bridge_port),
    )];
    match listen_port {
        Some(port) => Envoy::start_listening(bin, port, grpc, quay, &bridge_http).await,
        None => {
            let config = common::envoy::deploy_config_path();
            Envoy::start_config(bin, &config, grpc, quay, &bridge_http).await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_quay_answers_as_the_templated_user_and_creates_it_on_first_use() {
    let Some(bin) = require_envoy() else { return };
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let quay = &shared.quay;
    let bridge = start_bridge(shared).await;
    let (service, owner_id, repo_id) = (&bridge.service, &bridge.owner_id, "4242");
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), quay.port).await;
    let http = reqwest::Client::new();

    // Quay's OIDC client reads the discovery document at OIDC_SERVER; its issuer must match.
    let discovery: serde_json::Value = http
        .get(format!(
            "{}/.well-known/openid-configuration",
            shared.bridge_issuer()
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("discovery JSON");
    assert_eq!(
        discovery["issuer"],
        shared.bridge_issuer().as_str(),
        "{discovery}"
    );

    // Quay has never seen this repository's user.
    let user = github_user(owner_id, repo_id);
    assert_eq!(
        quay_user_status(shared, &user).await,
        404,
        "{user} exists already"
    );

    // A GitHub token Quay does not trust: through Envoy Quay receives a bridge token instead,
    // creates the templated user, and answers as it — twice, as the same user.
    let token = github_token(&shared.issuer, owner_id, repo_id);
    for _ in 0..2 {
        let (status, body) = bearer_get(envoy.url("/api/v1/user/"), &token).await;
        assert_eq!(status, 200, "{}", quay.log_tail());
        assert_eq!(body["username"], user.as_str(), "{body}");
    }
    assert_eq!(quay_user_status(shared, &user).await, 200);

    // Straight at Quay the GitHub token itself is refused: only the bridge token is trusted.
    let (status, _) = bearer_get(quay.url("/api/v1/user/"), &token).await;
    assert_eq!(status, 401, "{}", quay.log_tail());

    // A repository of another owner: no rule grants it, so no bridge token is minted and Quay
    // never creates its user.
    let stranger_owner = format!("{owner_id}9");
    let stranger = github_user(&stranger_owner, repo_id);
    let (status, _) = bearer_get(
        envoy.url("/api/v1/user/"),
        &github_token(&shared.issuer, &stranger_owner, repo_id),
    )
    .await;
    assert_eq!(status, 403, "{}", envoy.log());
    assert_eq!(
        quay_user_status(shared, &stranger).await,
        404,
        "{stranger} was created"
    );
}

/// `make_oci` of `.quay/smoke.py`: a one-layer OCI image layout with tag `latest` at `dir`.
fn make_oci(quay_dir: &std::path::Path, dir: &std::path::Path) {
    let output = std::process::Command::new(quay_dir.join(".venv/bin/python"))
        .args([
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import smoke; smoke.make_oci(sys.argv[2])",
        ])
        .arg(quay_dir)
        .arg(dir)
        .output()
        .expect("run .quay/.venv/bin/python");
    assert!(
        output.status.success(),
        "make_oci: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `skopeo copy` of the image at `oci` to `docker://{destination}` with `--dest-creds`.
fn skopeo_copy(oci: &std::path::Path, destination: &str, creds: &str) -> std::process::Output {
    std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--dest-creds", creds])
        .arg(format!("oci:{}:latest", oci.display()))
        .arg(format!("docker://{destination}"))
        .output()
        .expect("run skopeo (Debian's skopeo: scripts/setup.sh installs it)")
}

/// Segment `index` of a JWT (0: header, 1: claims), read without verification: what Quay's
/// registry token granted, which key signed a bridge token.
fn jwt_segment(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine as _;
    let segment = token.split('.').nth(index).expect("a JWT segment");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .expect("base64url segment");
    serde_json::from_slice(&bytes).expect("a JSON segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_skopeo_push_with_a_github_token_goes_only_where_the_policy_grants() {
    let Some(bin) = require_envoy() else { return };
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let quay = &shared.quay;
    let bridge = start_bridge(shared).await;
    let (service, owner_id, repo_id) = (&bridge.service, &bridge.owner_id, "7");
    // On the port Quay's SERVER_HOSTNAME names: the /v2/ challenge sends skopeo to this Envoy.
    let envoy = bridge_envoy(&bin, shared, service, Some(shared.envoy_port)).await;
    let registry = format!("127.0.0.1:{}", shared.envoy_port);
    let namespace = github_user(owner_id, repo_id);
    let token = github_token(&shared.issuer, owner_id, repo_id);
    let image = tempfile::tempdir().expect("a directory for the image");
    make_oci(&common::quay::quay_dir(), image.path());

    // `docker login -u anything -p "$GITHUB_TOKEN"`, as skopeo does it: a push the policy
    // grants, with Quay's /v2/auth issuing the registry token after its own checks.
    let pushed = skopeo_copy(
        image.path(),
        &format!("{registry}/{namespace}/app:latest"),
        &format!("oidc:{token}"),
    );
    assert!(
        pushed.status.success(),
        "push to {namespace}/app: {}\n{}",
        String::from_utf8_lossy(&pushed.stderr),
        quay.log_tail()
    );
    let http = reqwest::Client::new();
    let (status, body) = bearer_get(
        envoy.url(&format!(
            "/api/v1/repository/{namespace}/app/tag/?specificTag=latest"
        )),
        &token,
    )
    .await;
    assert_eq!(status, 200, "{}", quay.log_tail());
    assert_eq!(body["tags"][0]["name"], "latest", "{body}");

    // The same user's own namespace, another repository: Quay would allow it, the policy
    // does not.
    let refused = skopeo_copy(
        image.path(),
        &format!("{registry}/{namespace}/notgranted:latest"),
        &format!("oidc:{token}"),
    );
    assert!(!refused.status.success(), "pushed outside the grants");

    // The scopes Quay receives at /v2/auth are the downscoped ones: the granted repository
    // keeps its actions, the other one is gone before Quay sees the request.
    let marker = unique("auth");
    let response = http
        .get(envoy.url(&format!(
            "/v2/auth?service={registry}&scope=repository:{namespace}/app:push,pull\
             &scope=repository:{namespace}/notgranted:push,pull&account={marker}"
        )))
        .basic_auth("oidc", Some(&token))
        .send()
        .await
        .expect("/v2/auth through Envoy");
    assert_eq!(response.status(), 200, "{}", quay.log_tail());
    let body: serde_json::Value = response.json().await.expect("Quay's JSON");
    let registry_token = body["token"].as_str().expect("Quay's registry token");
    let access = jwt_segment(registry_token, 1)["access"].clone();
    let granted: Vec<&serde_json::Value> = access
        .as_array()
        .expect("an access list")
        .iter()
        .filter(|entry| entry["actions"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert_eq!(granted.len(), 1, "{access}");
    assert_eq!(granted[0]["name"], format!("{namespace}/app"), "{access}");
    // `account` is ignored by Quay and kept by quay-authz: it finds this request's log line.
    let log = quay_logged(quay, &marker).await;
    let auth_lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("/v2/auth") && line.contains(&namespace))
        .collect();
    assert!(
        !auth_lines.is_empty(),
        "Quay logged no /v2/auth for {namespace}"
    );
    assert!(
        auth_lines.iter().all(|line| !line.contains("notgranted")),
        "Quay received an ungranted scope: {auth_lines:?}"
    );
}

/// The bridge token quay-authz would hand Quay for `token` (the Check's `Authorization`).
async fn bridge_token_for(service: &TestService, token: &str) -> String {
    let response = service.check_bearer("GET", "/api/v1/user/", token).await;
    let authorization = common::service::response_header(&response, "authorization")
        .unwrap_or_else(|| panic!("no Authorization in the allow: {response:?}"));
    authorization
        .strip_prefix("Bearer ")
        .expect("a bearer credential")
        .to_string()
}

/// Quay's answer to `GET /api/v1/user/` with `bridge_token`, straight at Quay: status and
/// username.
async fn quay_user(quay: &common::quay::Quay, bridge_token: &str) -> (u16, serde_json::Value) {
    let (status, body) = bearer_get(quay.url("/api/v1/user/"), bridge_token).await;
    (status, body["username"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_quay_accepts_the_new_kid_and_tokens_minted_before() {
    let Some(bin) = require_envoy() else { return };
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let quay = &shared.quay;
    let bridge = start_bridge(shared).await;
    let (service, owner_id, repo_id) = (&bridge.service, &bridge.owner_id, "11");
    let old = &bridge.key;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), quay.port).await;
    let user = github_user(owner_id, repo_id);
    let token = github_token(&shared.issuer, owner_id, repo_id);

    // Before: Quay verifies the bridge token with the one published key.
    let before = bridge_token_for(service, &token).await;
    assert_eq!(quay_user(quay, &before).await, (200, json!(user)));

    // Rotation: a second key file added last, the configuration reloaded.
    let new = write_signing_key(bridge.keys.path(), "2026-12.pem");
    let reloaded = quay_authz::config::Config::parse(
        &format!(
            "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:{}\n  admin: 127.0.0.1:0\n{}",
            shared.bridge_port,
            exchange_config(shared, &[old, &new], owner_id)
        ),
        "rotated config",
    )
    .unwrap_or_else(|error| panic!("{error}"));
    service.running.service.apply(reloaded);

    // After: the new key signs, Quay fetches the JWKS again for the unknown kid and accepts it,
    // and the token minted before still works until it expires.
    let after = bridge_token_for(service, &token).await;
    assert_ne!(
        jwt_segment(&after, 0)["kid"],
        jwt_segment(&before, 0)["kid"],
        "the new key signs"
    );
    assert_eq!(quay_user(quay, &after).await, (200, json!(user)));
    assert_eq!(quay_user(quay, &before).await, (200, json!(user)));
    let (status, _) = bearer_get(envoy.url("/api/v1/user/"), &token).await;
    assert_eq!(status, 200, "{}", quay.log_tail());
}

// --- token exchange (issue 13): exchanged tokens through the deploy Envoy to the real Quay -----

/// `POST /quay-authz/oauth2/token` through `envoy` (RFC 8693, form-encoded, no other
/// credential): `subject` (an IdP JWT) for `scope`. The status and quay-authz's JSON answer.
async fn exchange_through(envoy: &Envoy, subject: &str, scope: &str) -> (u16, serde_json::Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        )
        .append_pair("subject_token", subject)
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("scope", scope)
        .finish();
    let response = reqwest::Client::new()
        .post(envoy.url("/quay-authz/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("the exchange through Envoy");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Exchanges `subject` for `scope` through `envoy` and checks the answer is RFC 8693's for a
/// bridge token of `shared`'s bridge whose scope is `issued` (`scope` in Quay's notation): the
/// token.
async fn exchanged_through(
    shared: &SharedQuay,
    envoy: &Envoy,
    subject: &str,
    scope: &str,
    issued: &str,
) -> String {
    let (status, mut body) = exchange_through(envoy, subject, scope).await;
    let token = body["access_token"].take();
    assert_eq!(status, 200, "{body}\n{}", envoy.log());
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(
        body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token",
        "{body}"
    );
    assert_eq!(body["scope"], issued, "{body}");
    let token = token.as_str().expect("an access_token").to_string();
    let claims = jwt_segment(&token, 1);
    assert_eq!(claims["iss"], shared.bridge_issuer().as_str(), "{claims}");
    assert_eq!(claims["aud"], common::quay::BRIDGE_AUDIENCE, "{claims}");
    assert_eq!(claims["scope"], issued, "{claims}");
    token
}

/// `quay-authz tokens …` (the CLI, as an operator runs it) against `service`'s admin API;
/// panics unless it exits 0. Its stdout.
fn tokens_cli(service: &TestService, args: &[&str]) -> String {
    let admin = service.running.admin_addr.to_string();
    let mut argv = vec!["tokens", "--admin", admin.as_str()];
    argv.extend_from_slice(args);
    let (code, stdout, stderr) = common::cli::quay_authz(&argv, &[]);
    assert_eq!(code, 0, "quay-authz {argv:?}: {stdout}{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanged_token_reaches_quay_within_its_scope_never_beyond_and_not_once_revoked() {
    let Some(bin) = require_envoy() else { return };
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let quay = &shared.quay;
    let bridge = start_bridge(shared).await;
    let (service, owner_id, repo_id) = (&bridge.service, &bridge.owner_id, "13");
    let envoy = bridge_envoy(&bin, shared, service, None).await;
    let user = github_user(owner_id, repo_id);
    let subject = github_token(&shared.issuer, owner_id, repo_id);

    // Exchanged through the deploy Envoy for `user:read` alone, where the policy also grants
    // write on `{user}/app` and `{user}/lib`.
    let token = exchanged_through(shared, &envoy, &subject, "user:read", "user:read").await;
    let jti = jwt_segment(&token, 1)["jti"]
        .as_str()
        .expect("a jti")
        .to_string();

    // Within its scope: allowed, and Quay, receiving the exchanged token itself (a bridge
    // token), answers as the bridge's user — through Envoy and straight at Quay alike.
    let (status, body) = bearer_get(envoy.url("/api/v1/user/"), &token).await;
    assert_eq!(status, 200, "{body}\n{}", quay.log_tail());
    assert_eq!(body["username"], user.as_str(), "{body}");
    assert_eq!(quay_user(quay, &token).await, (200, json!(user)));

    // Beyond its scope, within the policy (the subject token itself passes): a read and a
    // write of `{user}/app` are refused by quay-authz and never reach Quay.
    let app = format!("/api/v1/repository/{user}/app");
    let (status, body) = bearer_get(envoy.url(&app), &subject).await;
    assert!(body.get("reason").is_none(), "{status}: {body}");
    let denied_marker = unique("xdenied");
    let app = format!("{app}?m={denied_marker}");
    let (status, body) = bearer_get(envoy.url(&app), &token).await;
    assert_eq!(status, 403, "{body}\n{}", envoy.log());
    assert_eq!(body["reason"], "insufficient_scope", "{body}");
    let (status, body) = bearer_send(
        reqwest::Method::PUT,
        envoy.url(&app),
        &token,
        &json!({"description": "written with a user:read token"}),
    )
    .await;
    assert_eq!(status, 403, "{body}\n{}", envoy.log());
    assert_eq!(body["reason"], "insufficient_scope", "{body}");
    assert_quay_never_saw(quay, &envoy, &token, &denied_marker).await;

    // Revoked with the operator's CLI against this quay-authz's admin API: the next call
    // through Envoy is 401 token_revoked (and never reaches Quay); the IdP token is unaffected.
    let listed = tokens_cli(service, &["list", "--json"]);
    assert!(listed.contains(&jti), "{listed}");
    assert!(!listed.contains(&token), "tokens list printed the token");
    tokens_cli(service, &["revoke", "--jti", &jti]);
    let (status, body) = bearer_get(envoy.url("/api/v1/user/"), &token).await;
    assert_eq!(status, 401, "{body}\n{}", envoy.log());
    assert_eq!(body["reason"], "token_revoked", "{body}");
    let (status, body) = bearer_get(envoy.url("/api/v1/user/"), &subject).await;
    assert_eq!(status, 200, "{body}");
}

/// `skopeo inspect` of `docker://{reference}` with `--creds`.
fn skopeo_inspect(reference: &str, creds: &str) -> std::process::Output {
    std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo (Debian's skopeo: scripts/setup.sh installs it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanged_token_as_docker_login_pushes_only_within_its_scope() {
    let Some(bin) = require_envoy() else { return };
    let Some(shared) = SharedQuay::get() else {
        return;
    };
    let quay = &shared.quay;
    let bridge = start_bridge(shared).await;
    let (service, owner_id, repo_id) = (&bridge.service, &bridge.owner_id, "21");
    // On the port Quay's SERVER_HOSTNAME names: the /v2/ challenge sends skopeo to this Envoy.
    let envoy = bridge_envoy(&bin, shared, service, Some(shared.envoy_port)).await;
    let registry = format!("127.0.0.1:{}", shared.envoy_port);
    let namespace = github_user(owner_id, repo_id);
    let subject = github_token(&shared.issuer, owner_id, repo_id);
    let image = tempfile::tempdir().expect("a directory for the image");
    make_oci(&common::quay::quay_dir(), image.path());

    // What a CI job does: exchange its OIDC token for one repository (the policy grants two),
    // then `docker login -u oauth2 -p "$TOKEN"`, as skopeo does it.
    let scope = format!("repository:{namespace}/app:pull,push");
    let issued = format!("repo:read on {namespace}/app repo:write on {namespace}/app");
    let token = exchanged_through(shared, &envoy, &subject, &scope, &issued).await;
    let creds = format!("oauth2:{token}");
    let app = format!("{registry}/{namespace}/app:latest");
    let pushed = skopeo_copy(image.path(), &app, &creds);
    assert!(
        pushed.status.success(),
        "push to {namespace}/app: {}\n{}",
        String::from_utf8_lossy(&pushed.stderr),
        quay.log_tail()
    );
    let inspected = skopeo_inspect(&app, &creds);
    assert!(
        inspected.status.success(),
        "inspect {namespace}/app: {}\n{}",
        String::from_utf8_lossy(&inspected.stderr),
        quay.log_tail()
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&inspected.stdout).expect("skopeo inspect's JSON");
    assert_eq!(
        manifest["Name"],
        format!("{registry}/{namespace}/app"),
        "{manifest}"
    );

    // `{namespace}/lib`: the policy grants the push, the token's scope does not.
    let refused = skopeo_copy(
        image.path(),
        &format!("{registry}/{namespace}/lib:latest"),
        &creds,
    );
    assert!(
        !refused.status.success(),
        "pushed outside the token's scope"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    // Quay has the one repository and not the other (asked with the subject token, whose
    // policy reads both), and never issued a registry token for the other: its /v2/auth
    // never received that scope.
    let marker = unique("xlib");
    let repository =
        |name: &str| envoy.url(&format!("/api/v1/repository/{namespace}/{name}?m={marker}"));
    let (status, body) = bearer_get(repository("app"), &subject).await;
    assert_eq!(status, 200, "{body}\n{}", quay.log_tail());
    let (status, body) = bearer_get(repository("lib"), &subject).await;
    assert_eq!(status, 404, "{namespace}/lib exists: {body}");
    assert!(body.get("reason").is_none(), "denied by quay-authz: {body}");
    let log = quay_logged(quay, &format!("{namespace}/lib?m={marker}")).await;
    let lib_auth: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("/v2/auth") && line.contains(&format!("{namespace}%2Flib")))
        .collect();
    assert!(lib_auth.is_empty(), "Quay received the scope: {lib_auth:?}");
}
