//! The binary's command line: `check-config` on good and bad files.

mod common;

use common::cli::quay_authz;

#[test]
fn check_config_summarizes_the_shipped_example() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/config.yaml");
    let (code, stdout, stderr) = quay_authz(&["check-config", path], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("iss https://sts.windows.net/11111111-2222-3333-4444-555555555555/"),
        "{stdout}"
    );
    assert!(stdout.contains(
        "iss https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
    ));
    assert!(stdout.contains("iss https://token.actions.githubusercontent.com"));
    assert!(stdout.contains("team-roles (entra): repo:{role} on {ns}/*"));
}

#[test]
fn check_config_reports_errors_with_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "quay: {service: q, realm: \"https://q/v2/auth\"}\nissuers:\n  - name: k\n    issuer: http://idp\n    audiences: [quay]\n    algorithms: [HS256]\n",
    )
    .expect("write");
    let path = path.to_string_lossy().into_owned();
    let (code, _, stderr) = quay_authz(&["check-config", &path], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("{path}:6: issuers[0].algorithms:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:4: issuers[0].issuer: must be https")),
        "{stderr}"
    );
    let (code, _, stderr) = quay_authz(&["check-config", "/nonexistent/config.yaml"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

/// Writes `yaml` to a file and runs `check-config` on it: exit code, stdout, stderr, path.
fn check_config_text(yaml: &str) -> (i32, String, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write");
    let path = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = quay_authz(&["check-config", &path], &[]);
    (code, stdout, stderr, path)
}

const HEAD: &str = "quay: {service: q, realm: \"https://q/v2/auth\"}\nissuers:\n";

#[test]
fn check_config_refuses_rules_that_trust_every_tenant_or_everyone() {
    let yaml = format!(
        "{HEAD}  - name: entra\n    preset: entra\n    tenants: any\n    audiences: [api://quay-api]\n\
         rules:\n  - name: team-roles\n    issuers: [entra]\n    grant_from_groups:\n      \
         pattern: '^Quay\\.(?P<ns>[a-z]+)\\.admin$'\n      grant: [\"repo:admin on {{ns}}/*\"]\n  \
         - name: admins\n    issuers: [entra]\n    when: {{tenants: any}}\n    grant: [\"super:user\"]\n"
    );
    let (code, _, stderr, path) = check_config_text(&yaml);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{path}:8: rules[0].when.tenants: rule \"team-roles\" applies to issuer entra, which accepts every Entra tenant (tenants: any)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}:16: rules[1].grant: rule \"admins\" grants super:user to every valid token of issuer entra"
        )),
        "{stderr}"
    );
    let fixed = yaml
        .replace(
            "    issuers: [entra]\n    grant_from_groups",
            "    issuers: [entra]\n    when: {tenants: [11111111-2222-3333-4444-555555555555]}\n    grant_from_groups",
        )
        .replace("when: {tenants: any}", "when: {tenants: any, groups_any: [Quay.Admin]}");
    let (code, stdout, stderr, _) = check_config_text(&fixed);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("warning: issuer \"entra\" accepts tokens from ANY Entra tenant"),
        "{stdout}"
    );
}

#[test]
fn check_config_warns_about_github_rules_pinned_by_name() {
    let yaml = format!(
        "{HEAD}  - name: github\n    preset: github-actions\n    audiences: [https://quay.example.com]\n\
         rules:\n  - name: ci-push\n    issuers: [github]\n    when: {{claims: {{repository_owner: acme}}}}\n    \
         grant: [\"repository:{{claims.repository}}:pull,push\"]\n"
    );
    let (code, stdout, stderr, _) = check_config_text(&yaml);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("warning: rule \"ci-push\" matches GitHub Actions tokens of issuer github by repository_owner only"),
        "{stdout}"
    );
    let pinned = yaml.replace("repository_owner: acme", "repository_owner_id: \"1234567\"");
    let (code, stdout, stderr, _) = check_config_text(&pinned);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("warning:"), "{stdout}");
}

#[test]
fn shipped_example_has_no_warnings() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/config.yaml");
    let (code, stdout, stderr) = quay_authz(&["check-config", path], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("warning:"), "{stdout}");
}

/// `dev-issuer` with `args`: its exit code if it exits within the hang guard (None if it was
/// still running and was stopped), with its stderr and the files it wrote.
fn dev_issuer(args: &[&str]) -> (Option<i32>, String, bool) {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_string_lossy().into_owned();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quay-authz"))
        .arg("dev-issuer")
        .args(args)
        .args(["--out", &out])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dev-issuer");
    let config = dir.path().join("config.yaml");
    let started = Instant::now();
    // A hang guard, not a performance expectation: refusing or starting takes milliseconds.
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if config.exists() || started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (code, stderr, config.exists())
}

#[test]
fn dev_issuer_listens_on_loopback_unless_told_otherwise() {
    let (code, stderr, wrote) = dev_issuer(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!wrote, "it must not start");
    assert!(stderr.contains("will not listen on 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");

    let (code, stderr, wrote) = dev_issuer(&["--listen", "0.0.0.0:0", "--allow-non-loopback"]);
    assert_eq!(code, None, "it keeps serving: {stderr}");
    assert!(wrote, "{stderr}");
    assert!(
        stderr.contains("anyone who reaches it can mint tokens"),
        "{stderr}"
    );

    let (code, stderr, wrote) = dev_issuer(&["--listen", "127.0.0.1:0"]);
    assert_eq!(code, None, "{stderr}");
    assert!(wrote && !stderr.contains("non-loopback"), "{stderr}");
}

/// `check-config --quay-config`: the Quay login provider for a `forward` Entra issuer (v1 and
/// v2 issuers, an OBO audience, the clients its rules allow), nothing for a `strip` one — and
/// what it prints is YAML Quay can merge.
#[test]
fn check_config_prints_the_quay_login_provider_each_forward_issuer_needs() {
    let tenant = "11111111-2222-3333-4444-555555555555";
    let yaml = format!(
        "{HEAD}  - name: entra\n    preset: entra\n    tenants: [{tenant}]\n    \
         audiences: [6f1c2d3e-0000-4000-8000-000000000001, api://quay-api]\n  \
         - name: mesh\n    issuer: https://mesh.example.com\n    audiences: [quay]\n    upstream: strip\n\
         rules:\n  - name: backstage\n    issuers: [entra]\n    when: {{clients: [backstage]}}\n    \
         grant: [\"repo:read on acme/*\"]\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write");
    let path = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = quay_authz(&["check-config", "--quay-config", &path], &[]);
    assert_eq!(code, 0, "{stderr}");
    let fragment: serde_json::Value = serde_yaml::from_str(&stdout).expect("YAML");
    let entra = &fragment["ENTRA_LOGIN_CONFIG"];
    assert_eq!(
        entra["OIDC_SERVER"],
        format!("https://login.microsoftonline.com/{tenant}/v2.0/"),
        "{stdout}"
    );
    assert_eq!(
        entra["OIDC_ISSUERS"],
        serde_json::json!([
            format!("https://sts.windows.net/{tenant}/"),
            format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        ]),
        "{stdout}"
    );
    assert_eq!(entra["CLIENT_ID"], "6f1c2d3e-0000-4000-8000-000000000001");
    assert_eq!(
        entra["OIDC_AUDIENCES"],
        serde_json::json!(["6f1c2d3e-0000-4000-8000-000000000001", "api://quay-api"])
    );
    assert_eq!(
        entra["OIDC_ALLOWED_CLIENTS"],
        serde_json::json!(["backstage"])
    );
    assert_eq!(entra["PREFERRED_USERNAME_CLAIM_NAME"], "preferred_username");
    assert!(entra.get("DEBUGGING").is_none(), "{stdout}");
    assert_eq!(
        fragment.as_object().map(|keys| keys.len()),
        Some(1),
        "{stdout}"
    );
    assert!(
        stdout.contains("issuer mesh (upstream: strip): Quay receives no Authorization"),
        "{stdout}"
    );

    // Without the flag the summary says per issuer what Quay receives.
    let (code, stdout, stderr) = quay_authz(&["check-config", &path], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("upstream: forward (Quay receives the caller's token, unchanged)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream: strip (Quay receives no Authorization"),
        "{stdout}"
    );
}

/// `check-config --quay-config` builds Quay's login provider for the bridge from the
/// configuration as `serve` would run it: environment overrides of `bridge.issuer` and
/// `bridge.audience` included, so the fragment and the tokens can never disagree.
#[test]
fn quay_config_for_the_bridge_follows_the_configuration_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = common::pki::rsa_key_file(dir.path(), "bridge.pem");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "quay: {{service: q, realm: \"https://q/v2/auth\"}}\n\
             bridge:\n  issuer: https://quay.example.com/quay-authz\n  audience: quay-authz\n  signing_keys: [{}]\n\
             issuers:\n  - name: github\n    preset: github-actions\n    audiences: [https://quay.example.com]\n    upstream: exchange\n",
            key.display()
        ),
    )
    .expect("write");
    let path = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = quay_authz(&["check-config", "--quay-config", &path], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("OIDC_SERVER: https://quay.example.com/quay-authz/"),
        "{stdout}"
    );
    assert!(stdout.contains("CLIENT_ID: quay-authz"), "{stdout}");
    let (code, stdout, stderr) = quay_authz(
        &["check-config", "--quay-config", &path],
        &[
            (
                "QUAY_AUTHZ_BRIDGE_ISSUER",
                "https://edge.example.com/bridge",
            ),
            ("QUAY_AUTHZ_BRIDGE_AUDIENCE", "quay-bridge"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("OIDC_SERVER: https://edge.example.com/bridge/"),
        "{stdout}"
    );
    assert!(stdout.contains("CLIENT_ID: quay-bridge"), "{stdout}");
}
