//! Hot reload: a bad configuration is rejected and the old one keeps serving; a good one takes
//! effect; Checks running throughout never fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::issuer::*;
use common::service::*;
use quay_authz::dev_issuer::SigningKeyKind;

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
        store.len(),
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
    assert_eq!(store.len(), 1, "the entra key source was dropped");
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
