//! `quay-authz explain`: offline with a JWKS file, and against a running instance's admin API.

mod common;

use common::cli::quay_authz;
use common::issuer::*;
use common::service::TestService;
use quay_authz::dev::issuer::SigningKeyKind;

fn explain(args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = std::iter::once("explain")
        .chain(args.iter().copied())
        .collect();
    quay_authz(&args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_explain_with_jwks_file_narrates_each_step() {
    let issuer = start_issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = published_jwks(&issuer).await;
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks).expect("write jwks");
    // Keys "live" on a port nobody answers: the explanation must not need the network.
    let config = config_for(&issuer, "").replace(&issuer.jwks_url(), "http://127.0.0.1:9/keys");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        &config_path,
        format!("listen: {{grpc: 127.0.0.1:0, http: 127.0.0.1:0}}\n{config}"),
    )
    .expect("write config");
    let token = issuer
        .mint(
            SigningKeyKind::Rsa,
            &entra_claims(1, TENANT, TENANT, &["Quay.acme.write"]),
        )
        .expect("mint");
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, &token).expect("write token");
    let base = [
        "--config",
        config_path.to_str().expect("utf-8"),
        "--jwks-file",
        jwks_path.to_str().expect("utf-8"),
        "--token-file",
        token_path.to_str().expect("utf-8"),
    ];

    let (code, stdout, stderr) = explain(
        &[
            &base[..],
            &["--method", "PUT", "--path", "/v2/acme/app/manifests/v1"],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    for expected in [
        "route      requires repo:write on acme/app",
        "token      JWT, alg RS256, kid rsa-1, iss https://sts.windows.net/",
        &format!("issuer     entra (Entra preset, tenant {TENANT})"),
        "identity   user alice@example.com, issuer entra",
        "policy     rule team-roles granted repo:write on acme/*",
        "decision   allow (allowed), HTTP 200",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // No part of it: header, claims or signature.
    for part in token.split('.') {
        assert!(
            !stdout.contains(part) && !stderr.contains(part),
            "the token must never be printed"
        );
    }

    // Quay's registry token endpoint: what its scope parameters become.
    let (code, stdout, stderr) = explain(
        &[
            &base[..],
            &[
                "--path",
                "/v2/auth?scope=repository:acme/app:pull,push,*&scope=repository:other/x:pull",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    for expected in [
        "route      Quay's registry token endpoint",
        "scopes     Quay receives only repository:acme/app:pull,push",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    let (code, stdout, _) = explain(
        &[
            &base[..],
            &[
                "--method",
                "DELETE",
                "--path",
                "/api/v1/repository/acme/app",
                "--json",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json["reason"], "insufficient_scope");
    assert_eq!(json["http_status"], 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_asks_a_running_instance() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let mut expired = entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]);
    expired["exp"] = serde_json::json!(now() - 7200);
    let token = issuer.mint(SigningKeyKind::Rsa, &expired).expect("mint");
    let server = service.running.admin_addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        explain(&[
            "--server",
            &server,
            "--token",
            &token,
            "--path",
            "/api/v1/repository/acme/app",
        ])
    })
    .await
    .expect("explain");
    let (code, stdout, stderr) = output;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("identity   refused: token_expired"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decision   deny (token_expired), HTTP 401"),
        "{stdout}"
    );
}

/// Issue 11: `explain` observes the real pipeline run instead of re-running its phases beside
/// it. Against a running instance that has just answered a Check for the token, the identity
/// comes from the verified-token cache — the real run's path, which a re-run of parsing and
/// verification beside it would never show — and a path that needs no token stops after the
/// route, as the pipeline does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_narrates_the_real_run_cache_and_early_stops_included() {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = issuer
        .mint(
            SigningKeyKind::Rsa,
            &entra_claims(2, TENANT, TENANT, &["Quay.acme.read"]),
        )
        .expect("mint");
    let response = service
        .check_bearer("GET", "/api/v1/repository/acme/app", &token)
        .await;
    assert_eq!(common::service::decision(&response).0, "allow");
    let server = service.running.admin_addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        let cached = explain(&[
            "--server",
            &server,
            "--token",
            &token,
            "--path",
            "/api/v1/repository/acme/app",
        ]);
        let not_protected = explain(&[
            "--server",
            &server,
            "--token",
            &token,
            "--path",
            "/oauth/authorize",
        ]);
        (cached, not_protected)
    })
    .await
    .expect("explain");
    let ((code, stdout, stderr), (other_code, other_stdout, _)) = output;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("token      verified before: taken from the verified-token cache"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("JWT, alg"),
        "the token was not parsed again: {stdout}"
    );
    assert!(
        stdout.contains("decision   allow (allowed), HTTP 200"),
        "{stdout}"
    );
    assert_eq!(other_code, 0, "{other_stdout}");
    assert!(
        other_stdout.contains("route      not an API or registry path: not protected"),
        "{other_stdout}"
    );
    assert!(
        !other_stdout.contains("identity"),
        "the pipeline stops at the route; so does the narration: {other_stdout}"
    );
}
