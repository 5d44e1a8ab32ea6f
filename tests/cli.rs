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
