//! Route: from method + path to the permissions Quay would demand.
//!
//! Usage: `RouteTable::new()` once (compiles Quay's API table), then per request
//! `table.classify(method, path, body)` → `RouteOutcome`.
//!
//! The path is checked once, before matching: percent-encoding, empty segments (`//`), dot
//! segments and backslashes make a path mean different things to different parsers, so such
//! a path is refused (`path_ambiguous`), never guessed at. Quay's names never need any of them.

mod api_table;

use std::collections::HashMap;

use crate::permission::{Permission, QuayScope, Target, is_namespace_name, is_repository_path};

pub use api_table::API_ROUTES;

/// What an API route requires, as a function of its path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiNeed {
    /// A valid identity, no scope (Quay decides inside the handler).
    Authenticated,
    /// The scope on the repository named by `<apirepopath:repository>`.
    Repository(QuayScope),
    /// The scope on the namespace named by `<orgname>`.
    Namespace(QuayScope),
    /// The scope on the caller's account or the installation.
    Scope(QuayScope),
    /// The scope on some resource (listings and searches that Quay filters).
    AnyResource(QuayScope),
    /// `POST /api/v1/repository`: `repo:create` on the namespace in the JSON body.
    CreateRepository,
}

/// One row of Quay's API route table.
#[derive(Debug, Clone, Copy)]
pub struct ApiRoute {
    pub method: &'static str,
    /// Flask-style path: `/api/v1/repository/<apirepopath:repository>/tag/<tag>`.
    pub path: &'static str,
    /// The scope Quay's own decorators demand, as in Quay's source (None: it names none).
    pub quay_scope: Option<&'static str>,
    pub need: ApiNeed,
    /// For routes where Quay names no scope: why we require what we require.
    pub why: Option<&'static str>,
}

/// The result of classifying one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Outside the API and registry (UI, static files, `/oauth`): not ours to judge.
    NotProtected,
    /// A valid identity holding every listed permission (none: any valid identity).
    Requires(Vec<Permission>),
    /// An API or registry path no route matches: denied by default.
    Unclassified,
    /// The path is spelled ambiguously.
    Ambiguous(&'static str),
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
    /// `<apirepopath:repository>`: two segments, namespace and repository.
    RepositoryPath,
}

#[derive(Debug, Clone)]
struct CompiledApiRoute {
    segments: Vec<Segment>,
    literal_count: usize,
    route: &'static ApiRoute,
}

/// Quay's routes compiled for matching: API routes indexed by method and segment count.
#[derive(Debug, Clone)]
pub struct RouteTable {
    api: HashMap<(&'static str, usize), Vec<CompiledApiRoute>>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    pub fn new() -> Self {
        let mut api: HashMap<(&'static str, usize), Vec<CompiledApiRoute>> = HashMap::new();
        for route in API_ROUTES {
            let segments: Vec<Segment> = route
                .path
                .trim_matches('/')
                .split('/')
                .map(
                    |segment| match segment.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
                        Some("apirepopath:repository") => Segment::RepositoryPath,
                        Some(param) => Segment::Param(param.rsplit(':').next().unwrap_or(param)),
                        None => Segment::Literal(segment),
                    },
                )
                .collect();
            let width = segments
                .iter()
                .map(|segment| match segment {
                    Segment::RepositoryPath => 2,
                    _ => 1,
                })
                .sum();
            let literal_count = segments
                .iter()
                .filter(|segment| matches!(segment, Segment::Literal(_)))
                .count();
            api.entry((route.method, width))
                .or_default()
                .push(CompiledApiRoute {
                    segments,
                    literal_count,
                    route,
                });
        }
        Self { api }
    }

    /// Classifies a request. `path` is Envoy's `:path` (query included); `body` is the request
    /// body when Envoy sends it (`with_request_body`).
    pub fn classify(&self, method: &str, path: &str, body: Option<&str>) -> RouteOutcome {
        let (path_only, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let is_api = path_only == "/api" || path_only.starts_with("/api/");
        let is_registry = path_only == "/v2" || path_only.starts_with("/v2/");
        if !is_api && !is_registry {
            return RouteOutcome::NotProtected;
        }
        if let Err(why) = check_path_spelling(path_only) {
            return RouteOutcome::Ambiguous(why);
        }
        if is_registry {
            classify_registry(method, path_only, query)
        } else {
            self.classify_api(method, path_only, body)
        }
    }

    fn classify_api(&self, method: &str, path: &str, body: Option<&str>) -> RouteOutcome {
        let Some((route, params)) = self.match_api(method, path) else {
            return RouteOutcome::Unclassified;
        };
        match need_permissions(route.need, &params, body) {
            Some(permissions) => RouteOutcome::Requires(permissions),
            None => RouteOutcome::Unclassified,
        }
    }

    /// The Quay API route a request matches (`path` without its query).
    pub fn api_route(&self, method: &str, path: &str) -> Option<&'static ApiRoute> {
        self.match_api(method, path).map(|(route, _)| route)
    }

    fn match_api<'p>(
        &self,
        method: &str,
        path: &'p str,
    ) -> Option<(&'static ApiRoute, ApiParams<'p>)> {
        // Flask answers `/api/v1/user` and `/api/v1/user/` alike, so trailing slashes don't count.
        let segments: Vec<&str> = path
            .trim_end_matches('/')
            .trim_start_matches('/')
            .split('/')
            .collect();
        // HEAD is served by Flask's GET view.
        let method = if method == "HEAD" { "GET" } else { method };
        let candidates = self.api.get(&(method, segments.len()))?;
        // The most specific match wins: `/repository/mirror/health` over `/repository/<repo>`.
        candidates
            .iter()
            .filter_map(|candidate| {
                match_api(candidate, &segments).map(|params| (candidate, params))
            })
            .max_by_key(|(candidate, _)| candidate.literal_count)
            .map(|(candidate, params)| (candidate.route, params))
    }
}

/// Parameters a matched API route took from the path.
#[derive(Debug, Default)]
struct ApiParams<'p> {
    repository: Option<(&'p str, &'p str)>,
    namespace: Option<&'p str>,
}

fn match_api<'p>(candidate: &CompiledApiRoute, segments: &[&'p str]) -> Option<ApiParams<'p>> {
    let mut params = ApiParams::default();
    let mut index = 0;
    for segment in &candidate.segments {
        match segment {
            Segment::Literal(literal) => {
                if segments[index] != *literal {
                    return None;
                }
                index += 1;
            }
            Segment::Param(name) => {
                if segments[index].is_empty() {
                    return None;
                }
                if *name == "orgname" {
                    params.namespace = Some(segments[index]);
                }
                index += 1;
            }
            Segment::RepositoryPath => {
                params.repository = Some((segments[index], segments[index + 1]));
                index += 2;
            }
        }
    }
    Some(params)
}

fn need_permissions(
    need: ApiNeed,
    params: &ApiParams<'_>,
    body: Option<&str>,
) -> Option<Vec<Permission>> {
    Some(match need {
        ApiNeed::Authenticated => Vec::new(),
        ApiNeed::Repository(scope) => {
            let (namespace, name) = params.repository?;
            if !is_namespace_name(namespace) || !is_repository_path(name) {
                return None;
            }
            vec![Permission::repository(scope, namespace, name)]
        }
        ApiNeed::Namespace(scope) => {
            let namespace = params.namespace?;
            if !is_namespace_name(namespace) {
                return None;
            }
            vec![Permission::namespace(scope, namespace)]
        }
        ApiNeed::Scope(scope) => vec![Permission::global(scope)],
        ApiNeed::AnyResource(scope) => vec![Permission {
            scope,
            target: Target::AnyResource,
        }],
        ApiNeed::CreateRepository => vec![create_repository_permission(body)],
    })
}

/// `POST /api/v1/repository` names its namespace in the JSON body. With the body (Envoy's
/// `with_request_body`), `repo:create` on that namespace; without it we cannot know which, so
/// `repo:create` on every namespace.
fn create_repository_permission(body: Option<&str>) -> Permission {
    let namespace = body
        .and_then(|body| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|json| json.get("namespace")?.as_str().map(str::to_string))
        .filter(|namespace| is_namespace_name(namespace));
    match namespace {
        Some(namespace) => Permission::namespace(QuayScope::RepoCreate, &namespace),
        None => Permission::namespace(QuayScope::RepoCreate, "*"),
    }
}

/// Refuses spellings that different parsers resolve differently.
fn check_path_spelling(path: &str) -> Result<(), &'static str> {
    if path.contains('%') {
        return Err("percent-encoded characters are not used by Quay's API or registry paths");
    }
    if path.contains('\\') {
        return Err("backslash in path");
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == ' ' || !c.is_ascii())
    {
        return Err("control, space or non-ASCII character in path");
    }
    let inner = path.strip_suffix('/').unwrap_or(path);
    for segment in inner.split('/').skip(1) {
        match segment {
            "" => return Err("empty path segment (//)"),
            "." | ".." => return Err("dot segment in path"),
            _ => {}
        }
    }
    Ok(())
}

/// Registry v2 (the OCI distribution spec's endpoints), as Quay maps them to scopes: pull =
/// `repo:read`; push, upload and delete = `repo:write`.
fn classify_registry(method: &str, path: &str, query: Option<&str>) -> RouteOutcome {
    use QuayScope::{RegistryCatalog, RepoRead, RepoWrite};
    let rest = path.trim_start_matches("/v2").trim_start_matches('/');
    if rest.is_empty() {
        // The version check: any authenticated caller (Docker's login probe).
        return match method {
            "GET" | "HEAD" => RouteOutcome::Requires(Vec::new()),
            _ => RouteOutcome::Unclassified,
        };
    }
    if rest == "_catalog" {
        return match method {
            "GET" => RouteOutcome::Requires(vec![Permission::global(RegistryCatalog)]),
            _ => RouteOutcome::Unclassified,
        };
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let read = matches!(method, "GET" | "HEAD");
    // (segments the endpoint takes at the end, scope for this method)
    let endpoint: Option<(usize, QuayScope)> = match segments.as_slice() {
        [.., "manifests", _] => match method {
            "GET" | "HEAD" => Some((2, RepoRead)),
            "PUT" | "DELETE" => Some((2, RepoWrite)),
            _ => None,
        },
        [.., "blobs", "uploads", ""] => (method == "POST").then_some((3, RepoWrite)),
        [.., "blobs", "uploads", _] => {
            matches!(method, "GET" | "PATCH" | "PUT" | "DELETE").then_some((3, RepoWrite))
        }
        [.., "blobs", _] => match method {
            "GET" | "HEAD" => Some((2, RepoRead)),
            "DELETE" => Some((2, RepoWrite)),
            _ => None,
        },
        [.., "tags", "list"] => read.then_some((2, RepoRead)),
        [.., "referrers", _] => read.then_some((2, RepoRead)),
        _ => None,
    };
    let Some((taken, scope)) = endpoint else {
        return RouteOutcome::Unclassified;
    };
    if n < taken + 2 || segments[n - 1].is_empty() && !(taken == 3 && method == "POST") {
        return RouteOutcome::Unclassified;
    }
    let name_segments = &segments[..n - taken];
    let (namespace, name) = (name_segments[0], name_segments[1..].join("/"));
    if !is_namespace_name(namespace) || !is_repository_path(&name) {
        return RouteOutcome::Unclassified;
    }
    let mut required = vec![Permission::repository(scope, namespace, &name)];
    // Cross-repository blob mount: pull on the source as well as push on the target.
    if taken == 3 && method == "POST" {
        let from = query
            .into_iter()
            .flat_map(|query| query.split('&'))
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == "from")
            .map(|(_, value)| value);
        if let Some(from) = from {
            match from.split_once('/') {
                Some((from_namespace, from_name))
                    if is_namespace_name(from_namespace) && is_repository_path(from_name) =>
                {
                    required.push(Permission::repository(RepoRead, from_namespace, from_name));
                }
                _ => {
                    return RouteOutcome::Ambiguous(
                        "mount source (from=) is not a repository name",
                    );
                }
            }
        }
    }
    RouteOutcome::Requires(required)
}

#[cfg(test)]
mod tests {
    use super::*;
    use QuayScope::*;

    fn classify(method: &str, path: &str) -> RouteOutcome {
        RouteTable::new().classify(method, path, None)
    }

    fn repo(scope: QuayScope, ns: &str, name: &str) -> RouteOutcome {
        RouteOutcome::Requires(vec![Permission::repository(scope, ns, name)])
    }

    #[test]
    fn api_routes_map_to_quay_scopes() {
        let cases = [
            (
                "GET",
                "/api/v1/repository/acme/app",
                repo(RepoRead, "acme", "app"),
            ),
            (
                "PUT",
                "/api/v1/repository/acme/app",
                repo(RepoWrite, "acme", "app"),
            ),
            (
                "DELETE",
                "/api/v1/repository/acme/app",
                repo(RepoAdmin, "acme", "app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/tag/",
                repo(RepoRead, "acme", "app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/tag/?limit=5",
                repo(RepoRead, "acme", "app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/permissions/user/",
                repo(RepoAdmin, "acme", "app"),
            ),
            (
                "GET",
                "/api/v1/organization/acme/members",
                RouteOutcome::Requires(vec![Permission::namespace(OrgAdmin, "acme")]),
            ),
            (
                "GET",
                "/api/v1/user/",
                RouteOutcome::Requires(vec![Permission::global(UserRead)]),
            ),
            (
                "GET",
                "/api/v1/user",
                RouteOutcome::Requires(vec![Permission::global(UserRead)]),
            ),
            (
                "GET",
                "/api/v1/superuser/users/",
                RouteOutcome::Requires(vec![Permission::global(SuperUser)]),
            ),
            (
                "GET",
                "/api/v1/repository/mirror/health",
                RouteOutcome::Requires(vec![]),
            ),
            ("GET", "/api/v1/nothing/here", RouteOutcome::Unclassified),
            (
                "PATCH",
                "/api/v1/repository/acme/app",
                RouteOutcome::Unclassified,
            ),
            ("GET", "/", RouteOutcome::NotProtected),
            ("GET", "/oauth/authorize", RouteOutcome::NotProtected),
            ("GET", "/apix", RouteOutcome::NotProtected),
        ];
        for (method, path, expected) in cases {
            assert_eq!(classify(method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn create_repository_reads_the_namespace_from_the_body() {
        let table = RouteTable::new();
        assert_eq!(
            table.classify(
                "POST",
                "/api/v1/repository",
                Some(r#"{"namespace":"acme","repository":"app"}"#)
            ),
            RouteOutcome::Requires(vec![Permission::namespace(RepoCreate, "acme")])
        );
        for body in [None, Some("not json"), Some(r#"{"namespace":"../x"}"#)] {
            assert_eq!(
                table.classify("POST", "/api/v1/repository", body),
                RouteOutcome::Requires(vec![Permission::namespace(RepoCreate, "*")])
            );
        }
    }

    #[test]
    fn registry_routes() {
        let cases = [
            ("GET", "/v2/", RouteOutcome::Requires(vec![])),
            ("GET", "/v2", RouteOutcome::Requires(vec![])),
            (
                "GET",
                "/v2/_catalog",
                RouteOutcome::Requires(vec![Permission::global(RegistryCatalog)]),
            ),
            (
                "GET",
                "/v2/acme/app/manifests/latest",
                repo(RepoRead, "acme", "app"),
            ),
            (
                "HEAD",
                "/v2/acme/team/app/manifests/sha256:abc",
                repo(RepoRead, "acme", "team/app"),
            ),
            (
                "PUT",
                "/v2/acme/app/manifests/v1",
                repo(RepoWrite, "acme", "app"),
            ),
            (
                "DELETE",
                "/v2/acme/app/manifests/v1",
                repo(RepoWrite, "acme", "app"),
            ),
            (
                "GET",
                "/v2/acme/app/blobs/sha256:abc",
                repo(RepoRead, "acme", "app"),
            ),
            (
                "DELETE",
                "/v2/acme/app/blobs/sha256:abc",
                repo(RepoWrite, "acme", "app"),
            ),
            (
                "POST",
                "/v2/acme/app/blobs/uploads/",
                repo(RepoWrite, "acme", "app"),
            ),
            (
                "PATCH",
                "/v2/acme/app/blobs/uploads/uuid-1",
                repo(RepoWrite, "acme", "app"),
            ),
            (
                "PUT",
                "/v2/acme/app/blobs/uploads/uuid-1?digest=sha256:abc",
                repo(RepoWrite, "acme", "app"),
            ),
            (
                "GET",
                "/v2/acme/app/tags/list",
                repo(RepoRead, "acme", "app"),
            ),
            (
                "GET",
                "/v2/acme/app/referrers/sha256:abc",
                repo(RepoRead, "acme", "app"),
            ),
            (
                "POST",
                "/v2/acme/app/blobs/uploads/?mount=sha256:abc&from=other/base",
                RouteOutcome::Requires(vec![
                    Permission::repository(RepoWrite, "acme", "app"),
                    Permission::repository(RepoRead, "other", "base"),
                ]),
            ),
            (
                "POST",
                "/v2/acme/app/manifests/v1",
                RouteOutcome::Unclassified,
            ),
            (
                "GET",
                "/v2/app/manifests/latest",
                RouteOutcome::Unclassified,
            ),
            (
                "GET",
                "/v2/Acme/app/manifests/latest",
                RouteOutcome::Unclassified,
            ),
            ("GET", "/v2/acme/app/whatever", RouteOutcome::Unclassified),
        ];
        for (method, path, expected) in cases {
            assert_eq!(classify(method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for path in [
            "/api/v1/repository/acme%2Fapp",
            "/api/v1/repository/acme/%2e%2e/other",
            "/api/v1/repository/acme//app",
            "/api/v1/repository/acme/./app",
            "/api/v1/repository/acme/../other/app",
            "/v2/acme/app/../../other/app/manifests/latest",
            "/v2/acme\\app/manifests/latest",
            "/v2/acme/app/manifests/l atest",
            "/v2/acme/app/blobs/uploads/?mount=x&from=../x",
        ] {
            assert!(
                matches!(
                    classify("GET", path),
                    RouteOutcome::Ambiguous(_) | RouteOutcome::Unclassified
                ),
                "{path}"
            );
            if !path.contains("mount") {
                assert!(
                    matches!(classify("GET", path), RouteOutcome::Ambiguous(_)),
                    "{path}"
                );
            }
        }
        assert!(matches!(
            classify("POST", "/v2/acme/app/blobs/uploads/?mount=x&from=../x"),
            RouteOutcome::Ambiguous(_)
        ));
    }
}
