//! Hot reload: a bad configuration is rejected and the old one keeps serving; a good one takes
//! effect; Checks running throughout never fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::issuer::*;
use common::service::*;
use quay_authz::dev::issuer::SigningKeyKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_rejects_bad_and_applies_good_configs() {
    let issuer = start_issuer().await;
    let base = config_for(&issuer, "");
    let service = TestService::start(&base, true).await;
    let token = issuer
        .mint(SigningKeyKind::Rsa, &dev_claims(&issuer, &["readers"]))
        .expect("mint");
    let push = "/v2/acme/app/manifests/v1";
    assert_eq!(
        decision(&service.check_bearer("PUT", push, &token).await).1,
        "insufficient_scope"
    );

    // Load: pulls that every configuration in this test allows, sent until both reloads are
    // done, and started before the first one.
    let checked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut client = service.client.clone();
        let authorization = format!("Bearer {token}");
        let (checked, stop) = (checked.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                let request = check_request(
                    "GET",
                    "/v2/acme/app/manifests/latest",
                    &[("authorization", &authorization)],
                );
                match client.check(request).await {
                    Ok(response) if decision(response.get_ref()).0 == "allow" => {}
                    _ => failures += 1,
                }
                checked.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // A hang guard of 10 s, never a performance expectation.
    for _ in 0..400 {
        if checked.load(Ordering::Relaxed) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        checked.load(Ordering::Relaxed) >= 4,
        "the load did not start"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    let listen = "listen: {grpc: 127.0.0.1:0, http: 127.0.0.1:0}\n";
    std::fs::write(
        &path,
        format!("{listen}{base}\n  - name: broken\n    grant: [\"repo:fly on acme/*\"]\n"),
    )
    .expect("write");
    let error = service
        .running
        .service
        .reload(&path)
        .expect_err("bad config rejected");
    assert!(error.to_string().contains("unknown scope"), "{error}");

    let good = format!(
        "{listen}{base}\n  - name: pushers\n    issuers: [dev]\n    grant: [\"repository:acme/app:push\"]\n"
    );
    std::fs::write(&path, good).expect("write");
    service
        .running
        .service
        .reload(&path)
        .expect("good config applied");

    stop.store(true, Ordering::Relaxed);
    for task in load {
        assert_eq!(
            task.await.expect("load task"),
            0,
            "Checks failed during reload"
        );
    }
    assert_eq!(
        decision(&service.check_bearer("PUT", push, &token).await).0,
        "allow"
    );
    let (_, metrics) = service.http_get("/metrics").await;
    assert!(
        metrics.contains(r#"quay_authz_config_reloads_total{result="rejected"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"quay_authz_config_reloads_total{result="applied"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn reload_drops_the_key_sources_of_removed_issuers() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let store = &service.running.service.key_store;
    assert_eq!(
        store.source_count(),
        2,
        "entra's JWKS and the dev issuer's discovery"
    );
    let (_, metrics) = service.http_get("/metrics").await;
    assert!(
        metrics.contains(r#"quay_authz_jwks_keys{issuer="entra""#),
        "{metrics}"
    );

    // The same file without the entra issuer (and its rule).
    let text = config_for(&issuer, "");
    let without_entra = text
        .split("  - name: entra\n")
        .next()
        .map(|head| {
            let rest = &text[text.find("  - name: dev\n").expect("dev issuer")..];
            let rest = rest.replace(
                "  - name: team-roles\n    issuers: [entra]\n    grant_from_groups:\n      pattern: '^Quay\\.(?P<ns>[a-z0-9_]+)\\.(?P<role>read|write|admin)$'\n      grant: [\"repo:{role} on {ns}/*\"]\n",
                "",
            );
            format!("listen: {{grpc: 127.0.0.1:0, http: 127.0.0.1:0}}\n{head}{rest}")
        })
        .expect("config");
    let config = quay_authz::config::Config::parse(&without_entra, "reload").expect("config");
    service.running.service.apply(config);
    assert_eq!(store.source_count(), 1, "the entra key source was dropped");
    let (_, metrics) = service.http_get("/metrics").await;
    assert!(
        !metrics.contains(r#"quay_authz_jwks_keys{issuer="entra""#),
        "{metrics}"
    );
    let token = issuer
        .mint(SigningKeyKind::Rsa, &dev_claims(&issuer, &["readers"]))
        .expect("mint");
    assert_eq!(
        decision(
            &service
                .check_bearer("GET", "/v2/acme/app/manifests/latest", &token)
                .await
        )
        .0,
        "allow"
    );
}

/// Applies `config_yaml` (with loopback listeners) to the running service, as a reload does.
fn apply(service: &TestService, config_yaml: &str) {
    let text = format!("listen: {{grpc: 127.0.0.1:0, http: 127.0.0.1:0}}\n{config_yaml}");
    let config = quay_authz::config::Config::parse(&text, "reload").expect("config");
    service.running.service.apply(config);
}

fn dev_source(service: &TestService) -> Arc<quay_authz::jwks::KeySource> {
    let pipeline = service.running.service.pipeline.load_full();
    pipeline
        .key_sources()
        .find(|(name, _)| name.starts_with("dev"))
        .map(|(_, source)| source.clone())
        .expect("the dev issuer's key source")
}

/// `jwks` settings changed by a reload apply to the key sources that are kept, at once: here
/// `max_keys: 1` had dropped the issuer's EC key, and the reload that lifts it brings the key
/// back without a restart (the unknown-kid refetch is closed for 30 s, so only the new
/// settings can).
#[tokio::test]
async fn reload_applies_changed_jwks_settings_to_kept_key_sources() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, "jwks: {max_keys: 1}"), true).await;
    let token = issuer
        .mint(SigningKeyKind::Ec, &dev_claims(&issuer, &["readers"]))
        .expect("mint");
    let pull = "/v2/acme/app/manifests/latest";
    assert_eq!(
        decision(&service.check_bearer("GET", pull, &token).await).1,
        "unknown_key",
        "max_keys: 1 keeps only the RSA key"
    );
    let source = dev_source(&service);

    apply(&service, &config_for(&issuer, "jwks: {max_keys: 10}"));
    assert!(
        Arc::ptr_eq(&source, &dev_source(&service)),
        "the unchanged issuer keeps its key source"
    );
    // A hang guard of 10 s: the kept source refetches as soon as its settings change.
    let mut outcome = String::new();
    for _ in 0..400 {
        outcome = decision(&service.check_bearer("GET", pull, &token).await).0;
        if outcome == "allow" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(outcome, "allow", "the new max_keys never applied");
}

/// A reload that renames an issuer keeps its key source, reported under the new name.
#[tokio::test]
async fn reload_renames_an_issuer_and_its_kept_key_source() {
    let issuer = start_issuer().await;
    let base = config_for(&issuer, "");
    let service = TestService::start(&base, true).await;
    let source = dev_source(&service);
    let (_, text) = service.http_get("/metrics").await;
    assert!(
        text.contains(r#"quay_authz_jwks_keys{issuer="dev","#),
        "{text}"
    );

    let renamed = base
        .replace("  - name: dev\n", "  - name: dev-renamed\n")
        .replace("issuers: [dev]", "issuers: [dev-renamed]");
    apply(&service, &renamed);
    assert!(Arc::ptr_eq(&source, &dev_source(&service)));
    let (_, text) = service.http_get("/metrics").await;
    assert!(
        text.contains(r#"quay_authz_jwks_keys{issuer="dev-renamed","#),
        "{text}"
    );
    assert!(
        !text.contains(r#"quay_authz_jwks_keys{issuer="dev","#),
        "{text}"
    );
}

/// A reload that changes what a key source may vouch for (here the `iss` its discovery
/// document must name, at the same URL) gets a new source, fetched and checked under the new
/// settings: the keys fetched for the old issuer never vouch for the new one.
#[tokio::test]
async fn reload_fetches_a_key_source_whose_trust_settings_changed_afresh() {
    let issuer = start_issuer().await;
    let base = config_for(&issuer, "");
    let service = TestService::start(&base, true).await;
    // The discovery document names the loopback issuer, not this one.
    let other = "https://other.example";
    let moved = base.replace(
        &format!("    issuer: {}\n", issuer.issuer()),
        &format!(
            "    issuer: {other}\n    discovery: {}/.well-known/openid-configuration\n",
            issuer.issuer()
        ),
    );
    assert_ne!(moved, base);
    apply(&service, &moved);
    let mut claims = dev_claims(&issuer, &["readers"]);
    claims["iss"] = serde_json::json!(other);
    let token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    assert_eq!(
        decision(
            &service
                .check_bearer("GET", "/v2/acme/app/manifests/latest", &token)
                .await
        )
        .1,
        "keys_unavailable",
        "keys fetched for another issuer vouched for {other}"
    );
}
