//! The load generator against real gRPC servers in process: it counts every answer under the
//! decision the server gave, and sends exactly the requests it was asked to.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::issuer::*;
use common::service::*;
use quay_authz::dev::bench::loadgen::{self, LoadSettings, RequestShape, Workload};
use quay_authz::dev::bench::noop;
use quay_authz::dev::issuer::SigningKeyKind;

/// Settings that stop after `requests` Checks; the long duration is only a hang guard.
fn settings(target: String, requests: u64) -> LoadSettings {
    LoadSettings {
        concurrency: 4,
        connections: 2,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(120),
        max_requests: Some(requests),
        ..LoadSettings::new(target)
    }
}

#[tokio::test]
async fn counts_each_decision_of_quay_authz() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let reader = issuer
        .mint(SigningKeyKind::Rsa, &dev_claims(&issuer, &["readers"]))
        .expect("mint");
    let outsider = issuer
        .mint(SigningKeyKind::Rsa, &dev_claims(&issuer, &[]))
        .expect("mint");
    // Tokens alternate, so 200 Checks are 100 of each.
    let workload = Arc::new(Workload::new(
        RequestShape::default().requests(&[reader, outsider]),
    ));
    let target = format!("http://{}", service.running.grpc_addr);
    let report = loadgen::run(&settings(target, 200), &workload)
        .await
        .expect("load runs");
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.requests, 200);
    assert_eq!(report.decisions.get("allow"), Some(&100), "{report:?}");
    assert_eq!(report.decisions.get("deny"), Some(&100), "{report:?}");
    assert_eq!(
        report.reasons.get("deny/insufficient_scope"),
        Some(&100),
        "{report:?}"
    );
    assert_eq!(report.denials(), 100);
    assert!(report.latency.p50_us > 0.0 && report.latency.p50_us <= report.latency.p999_us);
}

/// Runs `checks` Checks against a no-op server giving `answer`; the load report.
async fn load_noop(answer: noop::Answer, checks: u64) -> loadgen::LoadReport {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(noop::serve(listener, answer, async {
        let _ = stopped.await;
    }));
    let workload = Arc::new(Workload::new(
        RequestShape::default().requests(&["any.token.at-all".to_string()]),
    ));
    let report = loadgen::run(&settings(format!("http://{address}"), checks), &workload)
        .await
        .expect("load runs");
    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .expect("server stops cleanly");
    report
}

#[tokio::test]
async fn noop_server_answers_every_check_ok() {
    let report = load_noop(noop::Answer::Empty, 50).await;
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(
        report.decisions.into_iter().collect::<Vec<_>>(),
        vec![("ok".to_string(), 50)]
    );
}

/// The no-op's second answer is quay-authz's own allow (built by `check::respond`), so the
/// load generator reads it as quay-authz's: an allow, with quay-authz's reason.
#[tokio::test]
async fn noop_server_can_answer_as_quay_authz_allows() {
    let report = load_noop(noop::Answer::LikeQuayAuthz, 20).await;
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(
        report.reasons.into_iter().collect::<Vec<_>>(),
        vec![("allow/allowed".to_string(), 20)]
    );
    let answer = noop::Answer::LikeQuayAuthz.response();
    assert_eq!(
        response_header(&answer, "x-quay-authz-user").as_deref(),
        Some("dev-user")
    );
    assert_eq!(
        response_header(&answer, "x-quay-authz-scopes").as_deref(),
        Some("repo:write on acme/*")
    );
}
