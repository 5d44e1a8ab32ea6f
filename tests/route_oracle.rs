//! Item 1 of issue 10: Quay's own router is the judge of the route table.
//!
//! `scripts/dev/quay_route_oracle.py`, run with the Quay virtualenv `scripts/setup.sh` builds in
//! `.quay/`, imports Quay v3.18's Flask app and asks its `url_map` which view serves each of tens
//! of thousands of generated requests (every route of `tests/data/quay-api-routes.json` with plain,
//! nested and route-word repository names, trailing slashes, extra segments, leading and doubled
//! slashes, percent-encodings, case changes, HEAD/OPTIONS, and the registry's `/v2/` rules), once
//! with every Quay feature on and once with every feature off (Quay drops a feature's routes
//! when its modules are imported, so each setting is its own process).
//!
//! For every request that reaches a view, quay-authz must demand at least the scope Quay's own
//! decorators demand there, on the resource Quay's router resolved (`repository`, `orgname`), or
//! deny. "At least" is decided with the policy's own semantics: every grant that satisfies one
//! of quay-authz's requirements must also satisfy Quay's.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use quay_authz::model::permission::{Grant, Permission, QuayScope, Target};
use quay_authz::route::{RouteOutcome, RouteTable, RouterPath};
use serde_json::Value;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What Quay's router did with one request.
struct Answer {
    method: String,
    target: String,
    verdict: Value,
}

fn run_oracle(python: &Path, features: &str) -> std::process::Child {
    Command::new(python)
        .arg(repo_root().join("scripts/dev/quay_route_oracle.py"))
        .args(["--features", features])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the route oracle")
}

fn answers(child: std::process::Child, features: &str) -> Vec<Answer> {
    let output = child.wait_with_output().expect("route oracle runs");
    assert!(
        output.status.success(),
        "route oracle (features {features}) failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8 output");
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header")).expect("header json");
    eprintln!("route_oracle: Quay with features {features}: {header}");
    lines
        .map(|line| {
            let verdict: Value = serde_json::from_str(line).expect("answer json");
            Answer {
                method: verdict["method"].as_str().expect("method").to_string(),
                target: verdict["target"].as_str().expect("target").to_string(),
                verdict,
            }
        })
        .collect()
}

/// `<apirepopath:repository>` → `<repository>`: the spelling the oracle reports rules in.
fn plain_rule(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('>').expect("closing >");
        let name = rest[open + 1..close].rsplit(':').next().unwrap_or_default();
        out.push_str(&format!("<{name}>"));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Quay's scope per (rule, method), from the route facts.
fn quay_scopes() -> HashMap<(String, String), Option<QuayScope>> {
    let facts: Value =
        serde_json::from_str(include_str!("data/quay-api-routes.json")).expect("routes json");
    facts["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|route| {
            let scope = route["scope"]
                .as_str()
                .map(|name| QuayScope::from_name(name).expect("known scope"));
            (
                (
                    plain_rule(route["path"].as_str().expect("path")),
                    route["method"].as_str().expect("method").to_string(),
                ),
                scope,
            )
        })
        .collect()
}

/// The registry's views (`endpoints/v2/*.py`) and what their decorators demand: pull
/// (`require_repo_read`) or push (`require_repo_write`); the version check and the token
/// endpoint need only a valid identity, the catalog Quay filters itself.
fn registry_scope(endpoint: &str, method: &str) -> Option<Option<QuayScope>> {
    use QuayScope::{RepoRead, RepoWrite};
    Some(match (endpoint, method) {
        ("v2.v2_support_enabled", _) | ("v2.generate_registry_jwt", _) => None,
        ("v2.catalog_search", _) => None,
        (
            "v2.fetch_manifest_by_tagname"
            | "v2.fetch_manifest_by_digest"
            | "v2.check_blob_exists"
            | "v2.download_blob"
            | "v2.list_all_tags"
            | "v2.list_manifest_referrers",
            _,
        ) => Some(RepoRead),
        (
            "v2.write_manifest_by_tagname"
            | "v2.write_manifest_by_digest"
            | "v2.delete_manifest_by_tag"
            | "v2.delete_manifest_by_digest"
            | "v2.start_blob_upload"
            | "v2.fetch_existing_upload"
            | "v2.upload_chunk"
            | "v2.monolithic_upload_or_last_chunk"
            | "v2.cancel_upload"
            | "v2.delete_digest",
            _,
        ) => Some(RepoWrite),
        _ => return None,
    })
}

/// The permission Quay demands for a view: its scope on the resource its router resolved.
fn quay_permission(scope: QuayScope, args: &Value) -> Permission {
    if let Some(repository) = args["repository"].as_str() {
        let (namespace, name) = repository.split_once('/').unwrap_or((repository, ""));
        return Permission::repository(scope, namespace, name);
    }
    let repo_or_org = matches!(
        scope,
        QuayScope::RepoRead
            | QuayScope::RepoWrite
            | QuayScope::RepoAdmin
            | QuayScope::RepoCreate
            | QuayScope::OrgAdmin
    );
    if let (Some(orgname), true) = (args["orgname"].as_str(), repo_or_org) {
        return Permission::namespace(scope, orgname);
    }
    if repo_or_org {
        // A listing or search: Quay filters what it shows.
        return Permission {
            scope,
            target: Target::AnyResource,
        };
    }
    Permission::global(scope)
}

/// Grants that could satisfy `required` or `needed`: every scope on the resources they name, on
/// every pattern above those resources, and on others.
fn grant_universe(required: &Permission, needed: &Permission) -> Vec<Grant> {
    let mut namespaces = vec!["*".to_string(), "other".to_string()];
    let mut repositories = vec!["*/*".to_string(), "other/x".to_string()];
    for permission in [required, needed] {
        match &permission.target {
            Target::Repository { namespace, name } => {
                namespaces.push(namespace.clone());
                repositories.push(format!("{namespace}/{name}"));
                repositories.push(format!("{namespace}/*"));
                let mut prefix = String::new();
                for segment in name.split('/') {
                    if !prefix.is_empty() {
                        repositories.push(format!("{namespace}/{prefix}/*"));
                        prefix.push('/');
                    }
                    prefix.push_str(segment);
                }
            }
            Target::Namespace(namespace) => {
                namespaces.push(namespace.clone());
                repositories.push(format!("{namespace}/*"));
            }
            Target::Global | Target::AnyResource => {}
        }
    }
    let mut texts = Vec::new();
    for scope in [
        "repo:read",
        "repo:write",
        "repo:admin",
        "repo:create",
        "user:read",
        "user:admin",
        "org:admin",
        "super:user",
        "registry:catalog:*",
    ] {
        texts.push(scope.to_string());
        for namespace in &namespaces {
            texts.push(format!("{scope} on {namespace}"));
        }
        for repository in &repositories {
            texts.push(format!("{scope} on {repository}"));
        }
    }
    texts
        .iter()
        .filter_map(|text| Grant::parse(text).ok())
        .flatten()
        .collect()
}

/// Whether demanding `required` demands at least `needed`: no grant gives the first without the
/// second. Memoized: the same pair comes back in many spellings.
fn demands_at_least(
    memo: &mut HashMap<(Permission, Permission), bool>,
    required: &Permission,
    needed: &Permission,
) -> bool {
    *memo
        .entry((required.clone(), needed.clone()))
        .or_insert_with(|| {
            grant_universe(required, needed)
                .iter()
                .filter(|grant| grant.satisfies(required))
                .all(|grant| grant.satisfies(needed))
        })
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Quay runs no view: 404, 405, a redirect, or Flask's own OPTIONS answer.
    no_view: usize,
    /// Quay serves a view outside the API and registry (UI, `/oauth2`, `/v1`, `/keys`, …).
    other_view: usize,
    /// Quay's view for a name Quay never creates: a 404 whatever the caller holds.
    no_resource: usize,
    same: usize,
    stricter: usize,
    denied: usize,
    /// `demands_at_least`'s answers so far.
    memo: HashMap<(Permission, Permission), bool>,
    less: Vec<String>,
    /// With every feature on: requests whose rule choice was compared with Quay's router, and
    /// those where quay-authz's table picks another rule.
    rule_checked: usize,
    other_rule: Vec<String>,
}

fn judge(table: &RouteTable, answer: &Answer, scopes: &ScopeFacts, counts: &mut Counts) {
    counts.total += 1;
    let verdict = &answer.verdict;
    if verdict["kind"] != "view" {
        counts.no_view += 1;
        return;
    }
    let endpoint = verdict["endpoint"].as_str().unwrap_or_default();
    let rule = verdict["rule"].as_str().unwrap_or_default();
    let args = &verdict["args"];
    let method = answer.method.as_str();
    let describe = |outcome: &RouteOutcome, needed: &str| {
        format!(
            "{method} {} → Quay {endpoint} ({rule}, {args}) needs {needed}; quay-authz {outcome:?}",
            answer.target
        )
    };
    if method == "OPTIONS" && verdict["auto_options"] == true {
        // Flask answers from the rule's methods (`provide_automatic_options`).
        counts.no_view += 1;
        return;
    }
    let scope = if endpoint.starts_with("api.") {
        if method == "OPTIONS" {
            // `ApiResource.options`: no scope, behind the API's authentication.
            Some(None)
        } else {
            let method = if method == "HEAD" { "GET" } else { method };
            scopes.get(&(rule.to_string(), method.to_string())).copied()
        }
    } else if endpoint.starts_with("v2.") {
        registry_scope(endpoint, method)
    } else {
        counts.other_view += 1;
        return;
    };
    let Some(scope) = scope else {
        let outcome = table.classify(&answer.method, &answer.target, None);
        counts
            .less
            .push(describe(&outcome, "a scope the route facts do not know"));
        return;
    };
    let outcome = table.classify(&answer.method, &answer.target, None);
    if verdict["resource_possible"] == false {
        // A name Quay never creates (outside its own grammar): its view can only answer 404.
        // Still, quay-authz must not wave it through unchecked.
        if outcome == RouteOutcome::NotProtected {
            counts.less.push(describe(&outcome, "a valid identity"));
        } else {
            counts.no_resource += 1;
        }
        return;
    }
    let needed = scope.map(|scope| quay_permission(scope, args));
    let needed_text = needed
        .as_ref()
        .map_or("a valid identity".to_string(), ToString::to_string);
    // Quay's registry token endpoint needs a valid identity (its scopes are cut afterwards,
    // tests/registry_token.rs): judged here as a route that requires one and nothing more.
    let outcome = match outcome {
        RouteOutcome::RegistryToken(_) => RouteOutcome::Requires(Vec::new()),
        other => other,
    };
    match &outcome {
        RouteOutcome::Unclassified | RouteOutcome::Ambiguous(_) => counts.denied += 1,
        RouteOutcome::NotProtected | RouteOutcome::RegistryToken(_) => {
            counts.less.push(describe(&outcome, &needed_text))
        }
        RouteOutcome::Requires(required) => {
            let resolved = args["repository"].as_str();
            let at_least = match &needed {
                Some(needed) => required
                    .iter()
                    .any(|r| demands_at_least(&mut counts.memo, r, needed)),
                // Quay names no scope: any valid identity, but on the repository it resolved.
                None => resolved.is_none_or(|repository| {
                    let on_repositories: Vec<String> = required
                        .iter()
                        .filter_map(|r| match &r.target {
                            Target::Repository { namespace, name } => {
                                Some(format!("{namespace}/{name}"))
                            }
                            _ => None,
                        })
                        .collect();
                    on_repositories.is_empty() || on_repositories.iter().any(|r| r == repository)
                }),
            };
            if !at_least {
                counts.less.push(describe(&outcome, &needed_text));
            } else if needed.as_ref().map_or(required.is_empty(), |needed| {
                required.len() == 1 && &required[0] == needed
            }) {
                counts.same += 1;
            } else {
                counts.stricter += 1;
            }
        }
    }
}

type ScopeFacts = HashMap<(String, String), Option<QuayScope>>;

/// With every feature on, Quay registers every rule of the table: the rule quay-authz's port of
/// Werkzeug's matcher picks must be the one Quay's router picks (ties between equal weights
/// included, which Werkzeug breaks by registration order).
fn check_rule_choice(table: &RouteTable, answer: &Answer, counts: &mut Counts) {
    let verdict = &answer.verdict;
    if verdict["kind"] != "view" || answer.target.contains('%') || answer.method == "OPTIONS" {
        return;
    }
    let endpoint = verdict["endpoint"].as_str().unwrap_or_default();
    if !endpoint.starts_with("api.") {
        return;
    }
    let Ok(router_path) = RouterPath::parse(&answer.target) else {
        return;
    };
    counts.rule_checked += 1;
    let quay_rule = verdict["rule"].as_str().unwrap_or_default();
    let ours = table
        .api_route(&answer.method, router_path.path)
        .map(|route| plain_rule(route.path));
    if ours.as_deref() != Some(quay_rule) {
        counts.other_rule.push(format!(
            "{} {}: Quay {quay_rule}, quay-authz {ours:?}",
            answer.method, answer.target
        ));
    }
}

#[test]
fn quay_authz_demands_at_least_what_quays_router_serves() {
    let Some(quay) = common::quay::require_quay_source() else {
        return;
    };
    let python = quay.join(".venv/bin/python");
    // Both settings at once: each is one Python process importing Quay.
    let on = run_oracle(&python, "on");
    let off = run_oracle(&python, "off");
    let table = RouteTable::new();
    let scopes = quay_scopes();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for (features, child) in [("on", on), ("off", off)] {
        let mut counts = Counts::default();
        for answer in answers(child, features) {
            judge(&table, &answer, &scopes, &mut counts);
            if features == "on" {
                check_rule_choice(&table, &answer, &mut counts);
            }
        }
        report.push(format!(
            "features {features}: total {}, no view {}, other views {}, no such resource {}, \
             same {}, stricter {}, denied {}, less {}{}",
            counts.total,
            counts.no_view,
            counts.other_view,
            counts.no_resource,
            counts.same,
            counts.stricter,
            counts.denied,
            counts.less.len(),
            if counts.rule_checked > 0 {
                format!(
                    "; rule choice compared {}, differs {}",
                    counts.rule_checked,
                    counts.other_rule.len()
                )
            } else {
                String::new()
            }
        ));
        failures.extend(
            counts
                .less
                .iter()
                .chain(&counts.other_rule)
                .map(|line| format!("features {features}: {line}")),
        );
    }
    for line in &report {
        eprintln!("route_oracle: {line}");
    }
    eprintln!("route_oracle: {:?}", started.elapsed());
    if failures.is_empty() {
        return;
    }
    // Every case in a file; the first ones in the message.
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("route-oracle-failures.txt");
    let written = std::fs::write(&path, failures.join("\n"));
    panic!(
        "quay-authz demands less than Quay, or resolves another rule, in {} cases \
         (all of them in {}{}):\n{}\n{}",
        failures.len(),
        path.display(),
        written.err().map(|e| format!(": {e}")).unwrap_or_default(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        report.join("\n")
    );
}
