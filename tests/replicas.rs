//! Two replicas, for real (issue 13, "Tests"): two `quay-authz serve` processes of the real
//! binary, each with its own configuration file and loopback ports, sharing one real
//! `redis-server` as `bridge.store`, the same bridge signing key and a development issuer whose
//! tokens are exchanged. Exchanges are real HTTP POSTs to a process's endpoint, Checks are real
//! gRPC calls, the lifecycle goes through the real `quay-authz tokens` CLI against a process's
//! admin listener, and the audit log is each process's own stderr (`--log-format json`).
//!
//! What this proves that the in-process tests cannot: nothing of the revocation list, the
//! live-token index or the mint counters lives in one process's memory.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::cli::quay_authz;
use common::issuer::{now, start_issuer};
use common::pki::rsa_key_file;
use common::redis::RedisServer;
use common::serve::ServeProcess;
use common::service::{check_request, decision, http_status};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use serde_json::{Value, json};
use tonic::transport::Channel;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const READ: &str = "/api/v1/repository/acme/app";
/// A hang guard for a process to start or answer, never a performance expectation.
const DEADLINE: Duration = Duration::from_secs(60);
/// `tokens` exit code when the token store does not answer (src/cli/tokens.rs, README "Token
/// lifecycle").
const NOT_NOW: i32 = 3;

/// The configuration both replicas share but for their listeners: the bridge with `exchange`
/// (`exchange_extra` inside it) over `store`, a GitHub-like issuer whose tokens are exchanged.
fn config(issuer: &DevIssuer, key: &Path, store: &str, exchange_extra: &str) -> String {
    format!(
        r#"listen: {{grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0}}
quay:
  service: quay.example.com
  realm: https://quay.example.com/v2/auth
bridge:
  issuer: https://quay-authz.example.com/bridge
  audience: quay-authz
  signing_keys: [{key}]
  store: "{store}"
  exchange: {{max_lifetime_seconds: 1800, default_lifetime_seconds: 600{exchange_extra}}}
issuers:
  - name: gha
    issuer: {iss}
    audiences: [quay]
    allow_insecure_http: true
    upstream: exchange
    subject: "gh:{{claims.repository_owner_id}}:{{claims.repository_id}}"
    username: "gh-{{claims.repository|slug}}"
rules:
  - name: acme-ci
    issuers: [gha]
    when: {{claims: {{repository_owner: acme}}}}
    grant: ["repository:acme/*:pull,push"]
"#,
        key = key.display(),
        iss = issuer.issuer(),
    )
}

/// A GitHub-Actions-shaped IdP token; `repository_id` names the principal (`gh:4242:<id>`).
fn gha_token(issuer: &DevIssuer, repository_id: &str) -> String {
    let now = now() as i64;
    let claims = json!({
        "iss": issuer.issuer(), "aud": "quay", "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app", "repository_owner": "acme",
        "repository_owner_id": "4242", "repository_id": repository_id,
        "iat": now - 10, "exp": now + 600,
    });
    issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint")
}

fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT payload");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("JSON claims");
    claims["jti"].as_str().expect("jti").to_string()
}

// === Replica: the real binary, serving ===

/// One `quay-authz serve` process with its own configuration file and JSON logs.
struct Replica {
    name: &'static str,
    process: ServeProcess,
    http: String,
    admin: String,
    client: AuthorizationClient<Channel>,
    _dir: tempfile::TempDir,
}

/// An answer of the exchange endpoint.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    text: String,
}

impl Replica {
    /// Starts `quay-authz --log-format json serve --config <its own file>` and waits until it
    /// is serving (its addresses from the "quay-authz serving" event) and `/readyz` answers 200.
    async fn start(name: &'static str, config: &str) -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).expect("write config");
        let mut process = ServeProcess::spawn(&path, "json");
        let started = Instant::now();
        let serving = loop {
            if let Some(event) = process
                .events()
                .into_iter()
                .find(|event| event["message"] == "quay-authz serving")
            {
                break event;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("{name} exited ({status}): {:#?}", process.lines());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{name} did not start: {:#?}",
                process.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let address = |field: &str| serving[field].as_str().unwrap_or_default().to_string();
        let (grpc, http, admin) = (
            address("grpc_addr"),
            address("http_addr"),
            address("admin_addr"),
        );
        let client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .expect("gRPC client connects");
        let replica = Replica {
            name,
            process,
            http,
            admin,
            client,
            _dir: dir,
        };
        replica.wait_ready(started).await;
        replica
    }

    /// `/readyz`: status and body (0 and the error when it does not answer).
    async fn readyz(&self) -> (u16, String) {
        match reqwest::get(format!("http://{}/readyz", self.http)).await {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(error) => (0, error.to_string()),
        }
    }

    /// Polls `/readyz` until 200 (the issuer's keys are loaded).
    async fn wait_ready(&self, started: Instant) {
        loop {
            let answer = self.readyz().await;
            if answer.0 == 200 {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{} not ready: {answer:?}\n{:#?}",
                self.name,
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn lines(&self) -> Vec<String> {
        self.process.lines()
    }

    /// This process's audit events of kind `event` (`token_exchange`, `token_revoke`).
    fn audit_events(&self, event: &str) -> Vec<Value> {
        self.process
            .events()
            .into_iter()
            .filter(|e| e["target"] == "audit" && e["event"] == event)
            .collect()
    }

    /// A real gRPC Check with `Authorization: Bearer <token>`.
    async fn check(&self, path: &str, token: &str) -> CheckResponse {
        let authorization = format!("Bearer {token}");
        self.client
            .clone()
            .check(check_request(
                "GET",
                path,
                &[("authorization", &authorization)],
            ))
            .await
            .unwrap_or_else(|status| panic!("{}: Check: {status}", self.name))
            .into_inner()
    }

    /// The Check's decision, reason and HTTP status.
    async fn judge(&self, token: &str) -> (String, String, i32) {
        let response = self.check(READ, token).await;
        let (decision, reason) = decision(&response);
        (decision, reason, http_status(&response))
    }

    /// A real HTTP POST to `/oauth2/token`: exchanges `subject` for everything the policy grants.
    async fn exchange(&self, subject: &str) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT_TYPE)
            .append_pair("subject_token", subject)
            .append_pair("subject_token_type", JWT)
            .finish();
        let response = reqwest::Client::new()
            .post(format!("http://{}/oauth2/token", self.http))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|error| panic!("{}: exchange: {error}", self.name));
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        Answer {
            status,
            retry_after,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// Exchanges `subject`; the token (a 200 is asserted).
    async fn exchanged(&self, subject: &str) -> String {
        let answer = self.exchange(subject).await;
        assert_eq!(answer.status, 200, "{}: {}", self.name, answer.text);
        answer.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// `quay-authz tokens ARGS --admin <this replica's admin listener>`: exit code, stdout,
    /// stderr.
    async fn tokens(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<String> = ["tokens"]
            .iter()
            .chain(args)
            .map(|arg| arg.to_string())
            .collect();
        all.extend(["--admin".to_string(), self.admin.clone()]);
        // Off the runtime's threads: the in-process issuer answers on them meanwhile.
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            quay_authz(&args, &[])
        })
        .await
        .expect("CLI task")
    }

    /// The `jti`s `tokens list --json` shows through this replica.
    async fn listed(&self) -> Vec<String> {
        let (code, stdout, stderr) = self.tokens(&["list", "--json"]).await;
        assert_eq!(code, 0, "{}: {stdout}{stderr}", self.name);
        let listed: Vec<Value> =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        listed
            .iter()
            .map(|token| {
                assert_eq!(token["store"], "redis", "{token}");
                token["jti"].as_str().expect("jti").to_string()
            })
            .collect()
    }

    /// Neither a token nor its signature appears anywhere in this process's log.
    fn assert_never_logged(&self, tokens: &[&str]) {
        let text = self.lines().join("\n");
        assert!(!text.is_empty(), "{} logged nothing", self.name);
        for token in tokens {
            let signature = token.rsplit('.').next().expect("signature");
            assert!(
                !text.contains(signature),
                "{} logged a token:\n{text}",
                self.name
            );
        }
    }
}

/// The shared parts and two replicas over them.
struct Pair {
    issuer: DevIssuer,
    redis: RedisServer,
    one: Replica,
    two: Replica,
    _keys: tempfile::TempDir,
}

impl Pair {
    /// `None` when the test is skipped: no `redis-server` outside CI (`require_redis()`; with
    /// `CI=true` that is a failure).
    async fn start(exchange_extra: &str) -> Option<Pair> {
        let redis = RedisServer::start()?;
        let issuer = start_issuer().await;
        let keys = tempfile::tempdir().expect("tempdir");
        // One signing key for both: a token one replica signs, the other verifies.
        let key = rsa_key_file(keys.path(), "bridge.pem");
        let config = config(&issuer, &key, &redis.url(), exchange_extra);
        let one = Replica::start("replica 1", &config).await;
        let two = Replica::start("replica 2", &config).await;
        Some(Pair {
            issuer,
            redis,
            one,
            two,
            _keys: keys,
        })
    }

    fn both(&self) -> [&Replica; 2] {
        [&self.one, &self.two]
    }
}

fn allowed() -> (String, String, i32) {
    ("allow".into(), "allowed".into(), 200)
}

fn denied(reason: &str, status: i32) -> (String, String, i32) {
    ("deny".into(), reason.into(), status)
}

// === Revocation across replicas ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_one_replica_is_refused_by_the_other_on_its_next_check() {
    let Some(pair) = Pair::start("").await else {
        return;
    };
    let (one, two) = (&pair.one, &pair.two);
    let subject = gha_token(&pair.issuer, "501");

    // Exchanged on replica 1, allowed on a Check by replica 2 and listed by both.
    let first = one.exchanged(&subject).await;
    let first_jti = jti_of(&first);
    assert_eq!(two.judge(&first).await, allowed());
    assert_eq!(one.listed().await, [first_jti.as_str()]);
    assert_eq!(two.listed().await, [first_jti.as_str()]);

    // Revoked with the CLI through replica 1: the next Check on replica 2 is refused.
    let (code, stdout, stderr) = one.tokens(&["revoke", "--jti", &first_jti]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&first_jti), "{stdout}");
    assert_eq!(two.judge(&first).await, denied("token_revoked", 401));
    assert_eq!(one.judge(&first).await, denied("token_revoked", 401));
    assert!(two.listed().await.is_empty());

    // A second token of the same principal, exchanged on replica 2; the principal revoked
    // through replica 1 stops it on replica 2.
    let second = two.exchanged(&subject).await;
    let second_jti = jti_of(&second);
    assert_eq!(two.judge(&second).await, allowed());
    assert_eq!(one.judge(&second).await, allowed());
    assert_eq!(one.listed().await, [second_jti.as_str()]);
    let (code, stdout, stderr) = one
        .tokens(&["revoke", "--principal", "gh:4242:501", "--json"])
        .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let revoked: Vec<Value> =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(revoked.len(), 1, "{stdout}");
    assert_eq!(revoked[0]["jti"], second_jti.as_str());
    assert_eq!(two.judge(&second).await, denied("token_revoked", 401));
    assert_eq!(one.judge(&second).await, denied("token_revoked", 401));
    assert!(one.listed().await.is_empty());
    assert!(two.listed().await.is_empty());
    // The IdP token is not an exchanged token: no revocation reaches it.
    for replica in pair.both() {
        assert_eq!(replica.judge(&subject).await, allowed(), "{}", replica.name);
    }

    // Audit: each exchange on the replica that issued it, the revocations on replica 1 (where
    // the CLI asked), naming the jti and the principal.
    let issued_jtis = |replica: &Replica| -> Vec<String> {
        replica
            .audit_events("token_exchange")
            .iter()
            .filter(|event| event["result"] == "issued")
            .map(|event| event["jti"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(issued_jtis(one), [first_jti.as_str()]);
    assert_eq!(issued_jtis(two), [second_jti.as_str()]);
    let revocations = one.audit_events("token_revoke");
    assert_eq!(revocations.len(), 2, "{revocations:#?}");
    for (field, value) in [
        ("kind", "jti"),
        ("result", "revoked"),
        ("jti", first_jti.as_str()),
        ("principal", "gh:4242:501"),
        ("source_issuer", "gha"),
    ] {
        assert_eq!(revocations[0][field], value, "{field}: {}", revocations[0]);
    }
    assert_eq!(revocations[0]["count"], 1);
    for (field, value) in [
        ("kind", "principal"),
        ("result", "revoked"),
        ("jti", ""),
        ("principal", "gh:4242:501"),
    ] {
        assert_eq!(revocations[1][field], value, "{field}: {}", revocations[1]);
    }
    assert_eq!(revocations[1]["count"], 1);
    assert!(two.audit_events("token_revoke").is_empty());
    // Neither the IdP token nor an exchanged one in either process's log.
    for replica in pair.both() {
        replica.assert_never_logged(&[&subject, &first, &second]);
    }
}

// === Redis going away and coming back ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_both_replicas_fail_closed_for_exchanged_tokens_and_recover_after_restart()
 {
    let Some(mut pair) = Pair::start("").await else {
        return;
    };
    let subject = gha_token(&pair.issuer, "502");
    let live = pair.one.exchanged(&subject).await;
    for replica in pair.both() {
        assert_eq!(replica.judge(&live).await, allowed(), "{}", replica.name);
    }

    pair.redis.stop();
    let mut refused_exchanges = Vec::new();
    for replica in pair.both() {
        // The exchanged token needs the revocation list: 503, never an allow.
        assert_eq!(
            replica.judge(&live).await,
            denied("revocation_unavailable", 503),
            "{}",
            replica.name
        );
        // The IdP token needs no store.
        assert_eq!(replica.judge(&subject).await, allowed(), "{}", replica.name);
        // Nothing is issued that could not be listed and revoked.
        let answer = replica.exchange(&subject).await;
        assert_eq!(
            (answer.status, answer.body["reason"].as_str()),
            (503, Some("revocation_unavailable")),
            "{}: {}",
            replica.name,
            answer.text
        );
        refused_exchanges.push(answer);
        // The CLI says the store is not answering, with the "not possible now" code.
        let (code, stdout, stderr) = replica.tokens(&["list"]).await;
        assert_eq!(code, NOT_NOW, "{}: {stdout}{stderr}", replica.name);
        assert!(stderr.contains("revocation_unavailable"), "{stderr}");
        // `/readyz` names the store and its last outcome, and stays ready: IdP tokens work.
        let (status, body) = replica.readyz().await;
        assert_eq!(status, 200, "{}: {body}", replica.name);
        assert!(
            body.contains(&format!(
                "token store: redis at {} (not answering",
                pair.redis.url()
            )),
            "{}: {body}",
            replica.name
        );
    }
    assert!(
        refused_exchanges
            .iter()
            .all(|answer| answer.body.get("access_token").is_none())
    );

    // Same port, same processes, no restart of theirs: they recover by themselves. The Redis
    // restarted empty (no persistence in this test): the index is gone, and so would be any
    // revocation (README "Token lifecycle"); this test asserts nothing about revocations.
    pair.redis.restart();
    let mut fresh = Vec::new();
    for replica in pair.both() {
        assert_eq!(replica.judge(&live).await, allowed(), "{}", replica.name);
        let token = replica.exchanged(&subject).await;
        assert_eq!(replica.judge(&token).await, allowed(), "{}", replica.name);
        fresh.push(jti_of(&token));
    }
    // Listed oldest first, then by jti: the two may share their second.
    fresh.sort();
    for replica in pair.both() {
        let mut listed = replica.listed().await;
        listed.sort();
        assert_eq!(listed, fresh, "{}", replica.name);
        let (status, body) = replica.readyz().await;
        assert_eq!(status, 200, "{}: {body}", replica.name);
        assert!(body.contains("(answering)"), "{}: {body}", replica.name);
    }

    // Restarted again while both replicas are idle: their connections died without their
    // knowing. An operation that meets a dropped connection is tried once more on a fresh one
    // when repeating it is harmless (src/store/redis.rs): reads, recording a token, counting
    // a mint. So the first exchange on each replica after the restart is issued, and so is
    // the first Check of the other replica's token.
    pair.redis.restart();
    for replica in pair.both() {
        let answer = replica.exchange(&subject).await;
        assert_eq!(answer.status, 200, "{}: {:?}", replica.name, answer.body);
    }
    pair.redis.restart();
    for replica in pair.both() {
        assert_eq!(replica.judge(&live).await, allowed(), "{}", replica.name);
        replica.assert_never_logged(&[&subject, &live]);
    }
}

// === The mint rate limit, counted across replicas ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mint_rate_limit_is_shared_by_both_replicas() {
    let Some(pair) = Pair::start(", mints_per_principal_per_minute: 3").await else {
        return;
    };
    let (one, two) = (&pair.one, &pair.two);
    // The counter's window is the clock's minute (both processes read this host's clock): a
    // run that straddles two minutes is done again with a fresh principal, as in
    // tests/exchange.rs.
    for attempt in 0.. {
        let subject = gha_token(&pair.issuer, &format!("503{attempt}"));
        let minute = now() / 60;
        // Three mints spread over both replicas, then one more on each.
        let mut answers = Vec::new();
        for replica in [one, two, one, two, one] {
            answers.push(replica.exchange(&subject).await);
        }
        if now() / 60 != minute {
            continue;
        }
        let statuses: Vec<u16> = answers.iter().map(|answer| answer.status).collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        for refused in &answers[3..] {
            assert_eq!(
                (
                    refused.body["error"].as_str(),
                    refused.body["reason"].as_str()
                ),
                (Some("temporarily_unavailable"), Some("mint_rate_limited")),
                "{}",
                refused.text
            );
            let retry: u64 = refused
                .retry_after
                .as_deref()
                .and_then(|value| value.parse().ok())
                .expect("Retry-After");
            assert!((1..=60).contains(&retry), "{retry}");
        }
        break;
    }
    // Another principal is not affected, on either replica.
    let other = gha_token(&pair.issuer, "504");
    for replica in pair.both() {
        assert_eq!(
            replica.exchange(&other).await.status,
            200,
            "{}",
            replica.name
        );
    }
}
