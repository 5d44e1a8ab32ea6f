//! The `redis://` token store against a real `redis-server` (issue 13 item 4): two stores
//! opened on one Redis share the live-token index, the revocation list and the mint counters;
//! every key expires with what it describes; a Redis that stops makes every operation fail
//! closed, promptly, and the same store works again when it is back; a wrong password or a
//! port that is not Redis is a `StoreError` that names no password.

mod common;

use std::collections::BTreeMap;

use common::issuer::start_issuer;
use common::pki::rsa_key_file;
use common::redis::{RedisServer, free_port};
use common::service::{TestService, decision};
use quay_authz::config::bridge::{RedisLocation, StoreLocation};
use quay_authz::dev::issuer::SigningKeyKind;
use quay_authz::model::decision::Reason;
use quay_authz::store::{IssuedToken, StoreError, StoreHealth, TokenStore};

fn open(url: &str) -> TokenStore {
    let location = RedisLocation::parse(url).expect("a valid redis URL");
    TokenStore::open(&StoreLocation::Redis(location))
}

fn token(jti: &str, principal: &str, issued_at: u64, expires_at: u64) -> IssuedToken {
    IssuedToken {
        jti: jti.into(),
        principal: principal.into(),
        username: format!("user-{principal}"),
        source_issuer: "github".into(),
        scopes: vec!["repo:read on acme/app".into(), "super:user".into()],
        issued_at,
        expires_at,
    }
}

/// Records `(jti, principal, seconds to live)` tokens issued at `now`.
async fn record_all(store: &TokenStore, tokens: &[(&str, &str, u64)], now: u64) {
    for (jti, principal, lifetime) in tokens {
        store
            .record(&token(jti, principal, now, now + lifetime), now)
            .await
            .expect("record");
    }
}

/// `is_revoked`, which must answer.
async fn is_revoked(
    store: &TokenStore,
    jti: &str,
    principal: &str,
    issued_at: u64,
    now: u64,
) -> bool {
    store
        .is_revoked(jti, principal, issued_at, now)
        .await
        .expect("is_revoked answers")
}

fn jtis(tokens: &[IssuedToken]) -> Vec<&str> {
    tokens.iter().map(|token| token.jti.as_str()).collect()
}

/// Now, as the exchange endpoint would pass it.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[tokio::test]
async fn a_token_recorded_on_one_replica_is_listed_on_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (open(&redis.url()), open(&redis.url()));
    assert_eq!(one.kind(), "redis");
    let now = now();
    let first = token("j1", "github:1:2", now, now + 600);
    one.record(&first, now).await.expect("record");
    two.record(&token("j2", "entra:t:o", now + 1, now + 900), now + 1)
        .await
        .expect("record");
    // Already expired when recorded: nothing to list.
    one.record(&token("old", "p", now - 100, now - 1), now)
        .await
        .expect("record");

    let listed = two.list(now + 2).await.expect("list");
    assert_eq!(jtis(&listed), ["j1", "j2"]);
    assert_eq!(listed[0], first, "every field survives the round trip");
    assert_eq!(one.live_count(now + 2).await.expect("count"), 2);
    // Past j1's exp it is no longer live, wherever it is asked.
    assert_eq!(jtis(&one.list(now + 600).await.expect("list")), ["j2"]);
    assert_eq!(two.live_count(now + 600).await.expect("count"), 1);
    assert_eq!(one.health(), StoreHealth::Up);
}

#[tokio::test]
async fn a_revocation_on_one_replica_holds_on_the_other_and_counts_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (open(&redis.url()), open(&redis.url()));
    let now = now();
    record_all(&one, &[("j1", "p1", 600), ("j2", "p1", 600)], now).await;
    assert!(!is_revoked(&two, "j1", "p1", now, now).await);

    // Both replicas revoke j1 at once: exactly one of them gets it back.
    let (a, b) = tokio::join!(one.revoke("j1", now + 1), two.revoke("j1", now + 1));
    let returned: Vec<IssuedToken> = [a.expect("revoke"), b.expect("revoke")]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(jtis(&returned), ["j1"]);
    assert!(is_revoked(&two, "j1", "p1", now, now + 2).await);
    assert!(is_revoked(&one, "j1", "p1", now, now + 2).await);
    assert!(!is_revoked(&two, "j2", "p1", now, now + 2).await);
    assert_eq!(jtis(&two.list(now + 2).await.expect("list")), ["j2"]);
    assert_eq!(
        two.revoke("never-issued", now + 2).await.expect("revoke"),
        None
    );
}

#[tokio::test]
async fn revoking_a_principal_on_one_replica_holds_on_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (open(&redis.url()), open(&redis.url()));
    let now = now();
    let tokens = [
        ("a", "github:1:2", 600),
        ("b", "github:1:2", 600),
        ("c", "github:9:9", 600),
    ];
    record_all(&one, &tokens, now).await;
    let revoked = two
        .revoke_principal("github:1:2", now + 10, 3600)
        .await
        .expect("revoke principal");
    assert_eq!(jtis(&revoked), ["a", "b"]);
    assert!(is_revoked(&one, "a", "github:1:2", now, now + 11).await);
    // A token the principal did not list (minted on a replica that has not recorded it yet)
    // is revoked too when issued before the mark.
    assert!(is_revoked(&one, "unlisted", "github:1:2", now + 5, now + 11).await);
    // Issued after the revocation: live.
    assert!(!is_revoked(&one, "later", "github:1:2", now + 11, now + 11).await);
    assert!(!is_revoked(&one, "c", "github:9:9", now, now + 11).await);
    assert_eq!(jtis(&one.list(now + 11).await.expect("list")), ["c"]);
}

#[tokio::test]
async fn the_mint_counter_adds_up_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (open(&redis.url()), open(&redis.url()));
    let minute = now() / 60 * 60;
    assert_eq!(one.count_mint("p", minute + 1).await.expect("count"), 1);
    assert_eq!(two.count_mint("p", minute + 2).await.expect("count"), 2);
    assert_eq!(one.count_mint("p", minute + 59).await.expect("count"), 3);
    assert_eq!(two.count_mint("q", minute + 3).await.expect("count"), 1);
    // A new minute counts afresh.
    assert_eq!(two.count_mint("p", minute + 60).await.expect("count"), 1);
}

#[tokio::test]
async fn every_key_expires_no_later_than_what_it_describes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = open(&redis.url());
    let now = now();
    let tokens = [
        ("short", "p1", 100),
        ("long", "p1", 300),
        ("other", "p2", 200),
    ];
    record_all(&store, &tokens, now).await;
    store.revoke("short", now).await.expect("revoke");
    store
        .revoke_principal("p2", now, 600)
        .await
        .expect("revoke principal");
    store.count_mint("p1", now).await.expect("count");

    // Each key and the latest moment (seconds from `now`) it may still exist.
    let window_end = now / 60 * 60 + 60 - now;
    let expected: BTreeMap<String, u64> = [
        ("quay-authz:token:long".to_string(), 300),
        ("quay-authz:tokens".to_string(), 300),
        ("quay-authz:revoked:short".to_string(), 100),
        ("quay-authz:revoked:other".to_string(), 200),
        ("quay-authz:revoked-principal:p2".to_string(), 600),
        (format!("quay-authz:mints:p1:{}", now / 60 * 60), window_end),
    ]
    .into_iter()
    .collect();
    let mut connection = redis.connection();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut connection)
        .expect("KEYS");
    keys.sort();
    assert_eq!(
        keys,
        expected.keys().cloned().collect::<Vec<_>>(),
        "every key is one of the layout's, under the prefix"
    );
    for (key, limit) in &expected {
        let milliseconds: i64 = redis::cmd("PTTL")
            .arg(key)
            .query(&mut connection)
            .expect("PTTL");
        assert!(milliseconds > 0, "{key} has no expiry ({milliseconds})");
        assert!(
            milliseconds as u64 <= limit * 1000,
            "{key} outlives what it describes: {milliseconds} ms > {limit} s"
        );
    }
}

fn assert_fails_closed(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    let error = result.expect_err(what);
    assert_eq!(error.reason(), Reason::RevocationUnavailable, "{what}");
}

#[tokio::test]
async fn a_stopped_redis_fails_every_operation_and_the_same_store_recovers() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let store = open(&redis.url());
    let now = now();
    record_all(&store, &[("j1", "p", 600)], now).await;

    redis.stop();
    // Each returns (fails closed) rather than waiting for Redis.
    assert_fails_closed(store.ping().await, "ping");
    assert_fails_closed(store.is_revoked("j1", "p", now, now).await, "is_revoked");
    assert_fails_closed(
        store.record(&token("j2", "p", now, now + 600), now).await,
        "record",
    );
    assert_fails_closed(store.list(now).await, "list");
    assert_fails_closed(store.live_count(now).await, "live_count");
    assert_fails_closed(store.revoke("j1", now).await, "revoke");
    assert_fails_closed(
        store.revoke_principal("p", now, 600).await,
        "revoke_principal",
    );
    assert_fails_closed(store.count_mint("p", now).await, "count_mint");
    assert!(
        matches!(store.health(), StoreHealth::Down(_)),
        "{:?}",
        store.health()
    );

    redis.restart();
    // The same instance, not reopened: it reconnects by itself. (The test server keeps no
    // data across the restart; production Redis should persist.)
    store.ping().await.expect("ping after restart");
    assert_eq!(store.health(), StoreHealth::Up);
    assert!(!is_revoked(&store, "j1", "p", now, now).await);
    store
        .record(&token("j3", "p", now, now + 600), now)
        .await
        .expect("record after restart");
    assert_eq!(jtis(&store.list(now).await.expect("list")), ["j3"]);
    assert_eq!(store.count_mint("p", now).await.expect("count"), 1);
}

#[tokio::test]
async fn a_redis_restarted_between_operations_is_reconnected_on_the_next_read() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let store = open(&redis.url());
    store.ping().await.expect("ping");
    // The connection held by the store is dropped by the restart; a read notices and
    // reconnects within the same call.
    redis.restart();
    assert!(!is_revoked(&store, "j", "p", 1, 2).await);
}

/// The error as everything could show it: Display, Debug and the detail.
fn shown(error: &StoreError) -> String {
    format!("{error} {error:?} {}", error.detail)
}

#[tokio::test]
async fn a_wrong_password_is_a_store_error_that_does_not_show_it() {
    let Some(redis) = RedisServer::start_with_password("right-horse-battery") else {
        return;
    };
    let wrong = format!("redis://:wrong-staple-9@127.0.0.1:{}/0", redis.port());
    let store = open(&wrong);
    let error = store.ping().await.expect_err("a wrong password is refused");
    assert_eq!(error.detail, "authentication failed", "{}", shown(&error));
    assert!(
        !shown(&error).contains("wrong-staple-9"),
        "{}",
        shown(&error)
    );
    assert!(
        matches!(store.health(), StoreHealth::Down(ref detail) if !detail.contains("wrong-staple-9"))
    );

    // No password at all: refused by the server (NOAUTH) on the first command.
    let error = open(&redis.url_without_password())
        .is_revoked("j", "p", 1, 2)
        .await
        .expect_err("no password is refused");
    assert_eq!(error.reason(), Reason::RevocationUnavailable);

    let store = open(&redis.url());
    store.ping().await.expect("the right password works");
    assert!(
        !format!(
            "{:?}",
            StoreLocation::Redis(RedisLocation::parse(&redis.url()).expect("url"))
        )
        .contains("right-horse-battery")
    );
}

#[tokio::test]
async fn a_port_that_is_not_redis_is_a_store_error() {
    // Nothing listens: connection refused.
    let store = open(&format!("redis://:pw-123@127.0.0.1:{}/0", free_port()));
    let error = store.ping().await.expect_err("nothing listens");
    assert_eq!(error.detail, "connection refused", "{}", shown(&error));

    // An HTTP server answers: an unexpected reply, not a panic.
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http_port = http.local_addr().expect("address").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = http.accept().await {
            let mut request = [0u8; 256];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let store = open(&format!("redis://:pw-123@127.0.0.1:{http_port}/0"));
    let error = store.ping().await.expect_err("HTTP is not Redis");
    assert_eq!(error.reason(), Reason::RevocationUnavailable);
    assert!(!shown(&error).contains("pw-123"), "{}", shown(&error));
    assert_fails_closed(store.is_revoked("j", "p", 1, 2).await, "is_revoked");

    // A server that accepts and never answers: the operation's timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let store = open(&format!("redis://127.0.0.1:{silent_port}/0"));
    let error = store
        .is_revoked("j", "p", 1, 2)
        .await
        .expect_err("a silent server is a timeout");
    assert!(error.detail.starts_with("timed out"), "{}", shown(&error));
}

/// `/readyz` of `service` once `done` holds for it; bounded polling (the store is pinged in
/// the background every few seconds), never a timing assertion.
async fn readyz_once(service: &TestService, done: impl Fn(&str) -> bool) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..150 {
        last = service.http_get("/readyz").await;
        if done(&last.1) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/readyz never got there: {} {}", last.0, last.1);
}

#[tokio::test]
async fn readyz_reports_the_store_and_a_redis_outage_leaves_the_instance_ready() {
    let Some(mut redis) = RedisServer::start_with_password("pw-not-shown") else {
        return;
    };
    common::log_capture::captured_events();
    let issuer = start_issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rsa_key_file(dir.path(), "bridge.pem");
    let config = format!(
        r#"
quay: {{service: quay.example.com, realm: "https://quay.example.com/v2/auth"}}
bridge:
  issuer: https://quay-authz.example.com/bridge
  audience: quay-authz
  signing_keys: [{key}]
  store: "{url}"
issuers:
  - name: gha
    issuer: {iss}
    audiences: [quay]
    allow_insecure_http: true
    upstream: exchange
    subject: "gh:{{claims.repository_owner_id}}:{{claims.repository_id}}"
rules:
  - {{name: acme, issuers: [gha], when: {{claims: {{repository_owner: acme}}}}, grant: ["repository:acme/*:pull"]}}
"#,
        key = key.display(),
        url = redis.url(),
        iss = issuer.issuer(),
    );
    let service = TestService::start(&config, true).await;
    let claims = serde_json::json!({
        "iss": issuer.issuer(), "aud": "quay", "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app", "repository_owner": "acme",
        "repository_owner_id": "1", "repository_id": "2",
        "iat": now(), "exp": now() + 600,
    });
    let caller = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    let where_ = format!("redis://127.0.0.1:{}/0 (password set)", redis.port());

    let (status, body) = readyz_once(&service, |body| body.contains("(answering)")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("token store: redis at {where_} (answering)")),
        "{body}"
    );
    assert_eq!(service.metric("quay_authz_token_store_up").await, 1.0);

    redis.stop();
    let (status, body) = readyz_once(&service, |body| body.contains("not answering")).await;
    assert_eq!(
        status, 200,
        "a Redis outage never makes the instance unready: {body}"
    );
    assert!(body.contains("connection refused"), "{body}");
    assert!(!body.contains("pw-not-shown"), "{body}");
    assert_eq!(service.metric("quay_authz_token_store_up").await, 0.0);
    // An IdP token (with its inline bridge token for Quay) needs no store: still allowed.
    let response = service
        .check_bearer("GET", "/api/v1/repository/acme/app", &caller)
        .await;
    assert_eq!(decision(&response).0, "allow", "{:?}", decision(&response));
    // Operations that need the store fail closed, and however many fail, the outage is
    // logged once.
    let store = &service.running.service.token_store;
    for _ in 0..5 {
        assert!(store.is_revoked("j", "p", 1, 2).await.is_err());
    }

    redis.restart();
    let (status, body) = readyz_once(&service, |body| body.contains("(answering)")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(service.metric("quay_authz_token_store_up").await, 1.0);
    assert!(
        !store
            .is_revoked("j", "p", 1, 2)
            .await
            .expect("answers again")
    );

    let ours = format!("127.0.0.1:{}/", redis.port());
    let log = common::log_capture::captured_text();
    let lines = |message: &str| {
        log.lines()
            .filter(|line| line.contains(&ours) && line.contains(message))
            .count()
    };
    assert_eq!(lines("token store does not answer"), 1, "{log}");
    assert_eq!(lines("token store answers again"), 1, "{log}");
    assert!(!log.contains("pw-not-shown"), "{log}");
}

/// Set in the child process of `rediss_verifies_the_server_certificate`: the URL to reach.
const TLS_CHILD_URL: &str = "QUAY_AUTHZ_TEST_REDISS_URL";

#[tokio::test]
async fn rediss_verifies_the_server_certificate() {
    if let Ok(url) = std::env::var(TLS_CHILD_URL) {
        // The child: SSL_CERT_FILE names the test CA, so the certificate is trusted.
        let store = open(&url);
        store
            .ping()
            .await
            .expect("rediss:// to a trusted certificate");
        let now = now();
        store
            .record(&token("j", "p", now, now + 60), now)
            .await
            .expect("record over TLS");
        assert_eq!(jtis(&store.list(now).await.expect("list")), ["j"]);
        return;
    }
    let ca = common::pki::TestCa::new("redis test CA");
    let leaf = ca.server("redis");
    let Some(redis) = RedisServer::start_tls(&leaf.cert_pem, &leaf.key_pem) else {
        return;
    };
    assert!(redis.url().starts_with("rediss://"));
    // Here only the system's CAs are trusted: the test CA's certificate is refused.
    let error = open(&redis.url())
        .ping()
        .await
        .expect_err("an untrusted certificate is refused");
    assert_eq!(
        error.reason(),
        Reason::RevocationUnavailable,
        "{}",
        shown(&error)
    );
    // A plain redis:// client on the TLS port gets no Redis answer either.
    assert!(
        open(&redis.url().replacen("rediss", "redis", 1))
            .ping()
            .await
            .is_err()
    );

    // The same test in a child process that trusts the test CA (rustls-native-certs reads
    // SSL_CERT_FILE; setting it here would leak into the other tests of this process).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write ca.pem");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "rediss_verifies_the_server_certificate",
            "--nocapture",
        ])
        .env(TLS_CHILD_URL, redis.url())
        .env("SSL_CERT_FILE", &ca_file)
        .output()
        .expect("run the child test");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "child: {log}");
    assert!(log.contains("1 passed"), "the child ran the test: {log}");
}

#[tokio::test]
async fn an_entry_whose_expiry_was_removed_by_hand_is_still_revoked_with_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = open(&redis.url());
    let now = now();
    record_all(&store, &[("j1", "p", 300), ("j2", "p", 300)], now).await;
    let mut connection = redis.connection();
    for jti in ["j1", "j2"] {
        let _: i64 = redis::cmd("PERSIST")
            .arg(format!("quay-authz:token:{jti}"))
            .query(&mut connection)
            .expect("PERSIST");
    }
    store.revoke("j1", now).await.expect("revoke");
    store
        .revoke_principal("p", now, 600)
        .await
        .expect("revoke principal");
    for jti in ["j1", "j2"] {
        assert!(is_revoked(&store, jti, "other", now, now).await);
        let milliseconds: i64 = redis::cmd("PTTL")
            .arg(format!("quay-authz:revoked:{jti}"))
            .query(&mut connection)
            .expect("PTTL");
        assert!(
            milliseconds > 0 && milliseconds <= 300_000,
            "{jti}: {milliseconds}"
        );
    }
}
