//! Property tests: no path spelling reaches a resource other than the one it literally names,
//! and no claim value widens a templated grant.

use proptest::prelude::*;
use quay_authz::config::Config;
use quay_authz::model::identity::Identity;
use quay_authz::model::permission::{NamePattern, ResourcePattern, Target};
use quay_authz::policy::evaluate;
use quay_authz::route::{RouteOutcome, RouteTable};

/// Quay's route table, compiled once for every case (compiling it per case is most of the
/// run time otherwise).
fn table() -> &'static RouteTable {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(RouteTable::new)
}

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
        if let RouteOutcome::Requires(required) = table().classify(method, &path, None) {
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
        username: "u".into(),
        tenant: None,
        client: None,
        audiences: vec![],
        groups: vec![format!("Quay.{repository}.write")],
        claims: claims.as_object().cloned().unwrap_or_default(),
        expires_at: u64::MAX,
        bridge_subject: None,
        exchanged: None,
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

// === Queries (issue 10 item 2) ===

/// `application/x-www-form-urlencoded` decoding as Quay's Werkzeug reads `request.args`
/// (Python's `parse_qsl`: split on `&`, `+` is a space, `%XX` decoded, a bad escape kept as
/// written), written independently of the service's decoder so the two can disagree.
fn werkzeug_args(query: &str) -> Vec<(String, String)> {
    fn unquote_plus(text: &str) -> String {
        let bytes = text.as_bytes();
        let hex = |b: u8| char::from(b).to_digit(16);
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (
                bytes[i],
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (b'+', _, _) => out.push(b' '),
                (b'%', Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                (byte, _, _) => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (unquote_plus(key), unquote_plus(value))
        })
        .collect()
}

/// A spelling of `word` with any of its characters percent-encoded, in either case.
fn spelled(word: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec((any::<bool>(), any::<bool>()), word.len()).prop_map(move |choices| {
        word.chars()
            .zip(choices)
            .map(|(c, (encode, upper))| match (encode, upper) {
                (false, _) => c.to_string(),
                (true, false) => format!("%{:02x}", c as u32),
                (true, true) => format!("%{:02X}", c as u32),
            })
            .collect()
    })
}

fn query_pair() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        3 => Just("from".to_string()),
        3 => Just("mount".to_string()),
        2 => spelled("from"),
        1 => spelled("mount"),
        1 => Just("digest".to_string()),
        1 => Just("From".to_string()),
        1 => Just("from+".to_string()),
        1 => Just("fro%6d".to_string()),
    ];
    let value = prop_oneof![
        Just("victim/secret".to_string()),
        Just("me/app".to_string()),
        Just("victim%2Fsecret".to_string()),
        Just("victim/sec+ret".to_string()),
        Just("sha256:abc".to_string()),
        Just("".to_string()),
        "[a-z/%+2fF]{0,10}",
    ];
    (key, value, any::<bool>()).prop_map(|(key, value, with_value)| {
        if with_value {
            format!("{key}={value}")
        } else {
            key
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Whatever the spelling, an upload the service allows requires pull on exactly the
    /// repository Quay will mount from (`request.args.get("from")`: the first decoded `from`),
    /// and a query with two decoded `from` or `mount` keys is never allowed.
    #[test]
    fn mount_source_is_checked_as_werkzeug_decodes_it(pairs in prop::collection::vec(query_pair(), 0..5)) {
        let query = pairs.join("&");
        let path = format!("/v2/me/app/blobs/uploads/?{query}");
        let outcome = table().classify("POST", &path, None);
        let args = werkzeug_args(&query);
        let froms: Vec<&str> = args.iter().filter(|(k, _)| k == "from").map(|(_, v)| v.as_str()).collect();
        let mounts = args.iter().filter(|(k, _)| k == "mount").count();
        if let RouteOutcome::Requires(required) = outcome {
            prop_assert!(froms.len() <= 1 && mounts <= 1, "{} allowed with {:?}", path, args);
            let pushes = required.iter().any(|p| matches!(&p.target, Target::Repository { namespace, name } if namespace == "me" && name == "app"));
            prop_assert!(pushes, "{} does not require push on me/app: {:?}", path, required);
            if let Some(from) = froms.first() {
                let checked = required.iter().any(|p| matches!(&p.target, Target::Repository { namespace, name } if format!("{namespace}/{name}") == *from));
                prop_assert!(checked, "{} mounts from {:?} but requires {:?}", path, from, required);
            }
        }
    }
}

// === Registry token scopes (issue 12 item 5) ===

/// Quay's scope pattern (`endpoints/v2/v2auth.py`) for a `SERVER_HOSTNAME`, with Python's `$`
/// (end, or before one final newline), written independently of the service.
fn quay_scope_regex(server_hostname: &str) -> regex::Regex {
    regex::Regex::new(&format!(
        r"\Arepository:((?:{}/)?((?:[.a-zA-Z0-9_-]+/)*[.a-zA-Z0-9_-]+)):((?:push|pull|\*)(?:,(?:push|pull|\*))*)\n?\z",
        regex::escape(server_hostname)
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn scope_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("scope".to_string()),
        2 => spelled("scope"),
        1 => Just("Scope".to_string()),
        1 => Just("scope+".to_string()),
        1 => Just("sco%2570e".to_string()),
        1 => Just("service".to_string()),
    ]
}

fn scope_value() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        6 => Just("repository:"),
        1 => Just("repository%3A"),
        1 => Just("repository%3a"),
        1 => Just("Repository:"),
        1 => Just(""),
        1 => Just("registry:catalog:"),
    ];
    let name = prop_oneof![
        Just("acme/app"),
        Just("acme/team/app"),
        Just("acme/team"),
        Just("acme/teamx/app"),
        Just("other/app"),
        Just("app"),
        Just("library/app"),
        Just("acme%2Fapp"),
        Just("acme%2fteam%2Fapp"),
        Just("acme/App"),
        Just("Acme/app"),
        Just("acme/.."),
        Just("acme//app"),
        Just("acme/app/"),
        Just("quay.example.com/acme/app"),
        Just("quay.example.com/other/app"),
        Just("quay.example.com/app"),
        Just("quay.example.com/acme/team/x"),
        Just("other.example.com/acme/app"),
        Just("acme/app+"),
        Just("acme/a%70p"),
    ];
    let actions = prop_oneof![
        Just("pull"),
        Just("push"),
        Just("*"),
        Just("%2A"),
        Just("pull,push"),
        Just("push,pull,*"),
        Just("pull%2Cpush"),
        Just("pull,"),
        Just("PULL"),
        Just("pull+push"),
        Just("delete"),
        Just("pull,pull"),
    ];
    let suffix = prop_oneof![
        6 => Just(""),
        1 => Just("%0A"),
        1 => Just("%0a%0a"),
        1 => Just("+"),
        1 => Just("%20"),
        1 => Just("&scope=repository:other/app:push"),
    ];
    (
        prefix,
        name,
        prop_oneof![Just(":"), Just("%3A")],
        actions,
        suffix,
    )
        .prop_map(|(prefix, name, colon, actions, suffix)| {
            format!("{prefix}{name}{colon}{actions}{suffix}")
        })
}

/// Envoy 1.40's query mutation as observed (tests/e2e_registry_token.rs): the raw key is
/// matched; a set overwrites every value of it; removals come after.
fn envoy_mutates(query: &str, scopes: &quay_authz::model::decision::ScopeRewrite) -> String {
    use quay_authz::model::decision::ScopeRewrite;
    let others = query.split('&').filter(|pair| {
        !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != "scope"
    });
    match scopes {
        ScopeRewrite::Unchanged => query.to_string(),
        ScopeRewrite::Only(scope) => others
            .chain([format!("scope={scope}").as_str()])
            .collect::<Vec<_>>()
            .join("&"),
        ScopeRewrite::Removed => others.collect::<Vec<_>>().join("&"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Whatever the spelling, every repository action Quay's `/v2/auth` reads from the query it
    /// receives after Envoy applied our mutation is one the policy grants: pull on acme/app,
    /// write on acme/team/*; never the library namespace, another namespace, or `*`. Also when
    /// Quay's `SERVER_HOSTNAME` carries a port that `quay.service` lacks.
    #[test]
    fn registry_token_scopes_never_exceed_the_grants(
        pairs in prop::collection::vec((scope_key(), scope_value()), 0..4),
        server_hostname in prop_oneof![Just("quay.example.com"), Just("quay.example.com:8443")],
    ) {
        use quay_authz::model::permission::{Grant, Permission, QuayScope};
        use quay_authz::route::registry_token::{downscope, parse_scope};
        let grants = Grant::parse("repository:acme/app:pull").and_then(|mut g| {
            g.extend(Grant::parse("repo:write on acme/team/*")?);
            Ok(g)
        }).unwrap_or_else(|e| panic!("{e}"));
        let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let path = format!("/v2/auth?service=quay.example.com&{query}");
        let RouteOutcome::RegistryToken(values) = table().classify("GET", &path, None) else {
            // Refused before any token work: nothing reaches Quay.
            return Ok(());
        };
        let requests: Vec<_> = values.iter().map(|v| parse_scope(v, "quay.example.com")).collect();
        let rewrite = downscope(&requests, |p| grants.iter().any(|g| g.satisfies(p)));
        let received = envoy_mutates(path.split_once('?').map_or("", |(_, q)| q), &rewrite);
        let scopes: Vec<String> = werkzeug_args(&received).into_iter().filter(|(k, _)| k == "scope").map(|(_, v)| v).collect();
        // Quay refuses the whole request (400) when one scope is outside its grammar.
        let mut parsed = Vec::new();
        for scope in &scopes {
            if scope.is_empty() { continue; }
            let Some(captures) = quay_scope_regex(server_hostname).captures(scope) else { return Ok(()); };
            parsed.push((captures[2].to_string(), captures[3].to_string()));
        }
        for (namespace_and_repo, actions) in parsed {
            let (namespace, repo) = namespace_and_repo.split_once('/').unwrap_or(("library", &namespace_and_repo));
            for action in actions.split(',') {
                let scope = match action { "pull" => QuayScope::RepoRead, "push" => QuayScope::RepoWrite, _ => QuayScope::RepoAdmin };
                let permission = Permission::repository(scope, namespace, repo);
                prop_assert!(
                    grants.iter().any(|g| g.satisfies(&permission)),
                    "{} reached Quay as {:?}: {} not granted", path, received, permission
                );
            }
        }
    }
}
