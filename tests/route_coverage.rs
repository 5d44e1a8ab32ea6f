//! Every method/path pair of Quay's API (tests/data/quay-api-routes.json, taken from Quay's
//! source) is classified, by the route Quay would dispatch to, with the scope Quay demands.

use quay_authz::model::permission::{QuayScope, Target};
use quay_authz::route::{RouteOutcome, RouteTable};

/// A concrete path for a Flask route: each parameter gets a value that fits it.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('>').expect("closing >");
        let param = &rest[open + 1..close];
        out.push_str(match param {
            "apirepopath:repository" => "acme/app",
            "orgname" => "acme",
            "namespace" => "acme",
            // Quay's <regex(DIGEST_PATTERN):manifestref>.
            "manifestref" => "sha256:0123456789abcdef",
            _ => "value1",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_quay_api_route_is_mapped_to_quays_scope() {
    let facts: serde_json::Value =
        serde_json::from_str(include_str!("data/quay-api-routes.json")).expect("json");
    let routes = facts["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 297);
    let table = RouteTable::new();
    let mut problems = Vec::new();
    for route in routes {
        let method = route["method"].as_str().expect("method");
        let flask_path = route["path"].as_str().expect("path");
        let quay_scope = route["scope"].as_str();
        let path = concrete(flask_path);
        match table.api_route(method, &path) {
            Some(matched) if matched.path == flask_path => {}
            Some(matched) => problems.push(format!(
                "{method} {path}: dispatched to {} instead of {flask_path}",
                matched.path
            )),
            None => {
                problems.push(format!("{method} {flask_path}: unmapped"));
                continue;
            }
        }
        let outcome = table.classify(method, &path, None);
        let RouteOutcome::Requires(required) = outcome else {
            problems.push(format!("{method} {flask_path}: {outcome:?}"));
            continue;
        };
        match quay_scope {
            None => {
                let documented = table.api_route(method, &path).and_then(|r| r.why).is_some();
                if !documented {
                    problems.push(format!(
                        "{method} {flask_path}: no scope in Quay and no documented decision"
                    ));
                }
            }
            Some(scope) => {
                let expected = QuayScope::from_name(scope).expect("known scope");
                let Some(permission) = required.first() else {
                    problems.push(format!(
                        "{method} {flask_path}: requires nothing, Quay demands {scope}"
                    ));
                    continue;
                };
                if permission.scope != expected {
                    problems.push(format!(
                        "{method} {flask_path}: requires {permission}, Quay demands {scope}"
                    ));
                }
                let target_fits = match &permission.target {
                    Target::Repository { namespace, name } => {
                        flask_path.contains("apirepopath") && namespace == "acme" && name == "app"
                    }
                    Target::Namespace(namespace) => {
                        namespace == "acme" || flask_path == "/api/v1/repository"
                    }
                    Target::Global => matches!(
                        expected,
                        QuayScope::UserRead | QuayScope::UserAdmin | QuayScope::SuperUser
                    ),
                    Target::AnyResource => !flask_path.contains('<'),
                };
                if !target_fits {
                    problems.push(format!(
                        "{method} {flask_path}: {permission} is on the wrong resource"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
