//! Property tests: no path spelling reaches a resource other than the one it literally names,
//! and no claim value widens a templated grant.

use proptest::prelude::*;
use quay_authz::config::Config;
use quay_authz::identify::Identity;
use quay_authz::permission::{NamePattern, ResourcePattern, Target};
use quay_authz::policy::evaluate;
use quay_authz::route::{RouteOutcome, RouteTable};

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("acme".to_string()),
        Just("app".to_string()),
        Just("team".to_string()),
        Just("".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2f".to_string()),
        Just("%2e%2e".to_string()),
        Just("a%2Fb".to_string()),
        Just("manifests".to_string()),
        Just("blobs".to_string()),
        Just("uploads".to_string()),
        Just("latest".to_string()),
        Just("tag".to_string()),
        Just("a\\b".to_string()),
        "[a-z0-9._-]{1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("/v2"), Just("/api/v1/repository")],
        prop::collection::vec(segment(), 0..7),
        any::<bool>(),
    )
        .prop_map(|(prefix, segments, trailing)| {
            let mut path = format!("{prefix}/{}", segments.join("/"));
            if trailing {
                path.push('/');
            }
            path
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn classified_paths_name_their_repository_literally(path in path(), method in prop_oneof![Just("GET"), Just("PUT"), Just("DELETE"), Just("POST"), Just("PATCH")]) {
        let table = RouteTable::new();
        if let RouteOutcome::Requires(required) = table.classify(method, &path, None) {
            // A path that was classified has no ambiguous spelling at all.
            prop_assert!(!path.contains('%') && !path.contains('\\'));
            prop_assert!(!path.trim_end_matches('/').contains("//"));
            prop_assert!(!path.split('/').any(|s| s == "." || s == ".."));
            for permission in required {
                if let Target::Repository { namespace, name } = &permission.target {
                    // The repository is spelled, segment for segment, right after the prefix.
                    let expected_prefix = if path.starts_with("/v2/") { "/v2/" } else { "/api/v1/repository/" };
                    let spelled = format!("{expected_prefix}{namespace}/{name}/");
                    prop_assert!(format!("{path}/").starts_with(&spelled), "{} resolved to {}/{}", path, namespace, name);
                }
            }
        }
    }
}

fn identity(repository: &str) -> Identity {
    let claims = serde_json::json!({"repository": repository, "repository_owner": "acme"});
    Identity {
        issuer: "github".into(),
        iss: "https://token.actions.githubusercontent.com".into(),
        subject: "s".into(),
        username: "u".into(),
        tenant: None,
        client: None,
        audiences: vec![],
        groups: vec![format!("Quay.{repository}.write")],
        claims: claims.as_object().cloned().unwrap_or_default(),
        expires_at: u64::MAX,
    }
}

fn config() -> Config {
    let text = r#"
quay: {service: q, realm: "https://q/v2/auth"}
issuers:
  - name: github
    preset: github-actions
    audiences: [https://quay.example.com]
rules:
  - name: ci
    issuers: [github]
    when: {claims: {repository_owner: acme}}
    grant: ["repository:{claims.repository}:pull,push", "repo:read on acme/{claims.repository}"]
  - name: roles
    grant_from_groups:
      pattern: '^Quay\.(?P<ns>.+)\.(?P<role>read|write|admin)$'
      grant: ["repo:{role} on {ns}/*"]
"#;
    Config::parse(text, "t").unwrap_or_else(|e| panic!("{e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn hostile_claims_never_widen_grants(value in prop_oneof![
        "[a-zA-Z0-9/*,: ._%-]{0,24}",
        Just("acme/*".to_string()),
        Just("*/*".to_string()),
        Just("acme/app:pull,push".to_string()),
        Just("acme/../other".to_string()),
    ]) {
        let config = config();
        let outcome = evaluate(&config.rules, &identity(&value));
        let literal = value.to_ascii_lowercase();
        for (grant, rule) in &outcome.grants {
            match &grant.on {
                ResourcePattern::Repository { namespace, name } => {
                    // Wildcards only where the template wrote them (`{ns}/*`).
                    prop_assert!(!matches!(namespace, NamePattern::Any));
                    let NamePattern::Exact(namespace) = namespace else { unreachable!() };
                    match name {
                        NamePattern::Exact(name) => {
                            let full = format!("{namespace}/{name}");
                            prop_assert!(full == literal || full == format!("acme/{literal}"), "{} gave {}", value, grant);
                        }
                        NamePattern::Any => prop_assert!(rule == "roles" && namespace == &literal, "{} gave {}", value, grant),
                        NamePattern::Below(prefix) => prop_assert!(rule == "roles" && format!("{namespace}/{prefix}") == literal, "{} gave {}", value, grant),
                    }
                }
                other => prop_assert!(false, "{} gave {:?}", value, other),
            }
        }
    }
}
