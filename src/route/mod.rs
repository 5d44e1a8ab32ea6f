//! Route: from method + path to the permissions Quay would demand.
//!
//! Usage: `RouteTable::new()` once (compiles Quay's API table), then per request
//! `table.classify(method, path, body)` → `RouteOutcome`.
//!
//! The path is checked once, before matching: percent-encoding, empty segments (`//`), dot
//! segments and backslashes make a path mean different things to different parsers, so such
//! a path is refused (`path_ambiguous`), never guessed at. Quay's names never need any of them.

mod api_table;
pub mod registry_token;
mod werkzeug;

use std::collections::HashMap;

use crate::model::permission::{
    Permission, QuayScope, Target, is_namespace_name, is_repository_path,
};

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
    /// Quay registers the path only when a feature is on (`@show_if`); when it is off, the
    /// request falls through to the next rule Werkzeug finds.
    pub feature_gated: bool,
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
    /// Quay's registry token endpoint (`GET /v2/auth`): any valid identity, and the `scope`
    /// parameters (decoded as Quay reads them, in order) are cut to what it is granted.
    RegistryToken(Vec<String>),
}

/// Quay's API routes compiled for matching: Werkzeug's state machine over the rules (one per
/// Flask path, with its methods), and each (rule, method)'s row of the table.
#[derive(Debug)]
pub struct RouteTable {
    matcher: werkzeug::RuleMatcher,
    routes: HashMap<(usize, &'static str), &'static ApiRoute>,
}

/// Quay's converters that the route facts do not spell out: `<manifestref>` is
/// `<regex(digest_tools.DIGEST_PATTERN):manifestref>` (`endpoints/api/manifest.py`), so a
/// non-digest there falls through to other rules, as it does in Quay.
const CONVERTER_SPELLINGS: &[(&str, &str)] = &[(
    "<manifestref>",
    r#"<regex("([A-Za-z0-9_+.-]+):([A-Fa-f0-9]+)"):manifestref>"#,
)];

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    pub fn new() -> Self {
        let mut paths: Vec<&'static str> = Vec::new();
        let mut methods: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
        for route in API_ROUTES {
            if !methods.contains_key(route.path) {
                paths.push(route.path);
            }
            methods.entry(route.path).or_default().push(route.method);
        }
        let rules = paths
            .iter()
            .map(|path| {
                let mut spelled = (*path).to_string();
                for (plain, converter) in CONVERTER_SPELLINGS {
                    spelled = spelled.replace(plain, converter);
                }
                werkzeug::Rule {
                    path: spelled,
                    methods: methods.get(path).cloned().unwrap_or_default(),
                }
            })
            .collect();
        let matcher = werkzeug::RuleMatcher::new(rules);
        let index: HashMap<&'static str, usize> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| (*path, i))
            .collect();
        let routes = API_ROUTES
            .iter()
            .filter_map(|route| Some(((*index.get(route.path)?, route.method), route)))
            .collect();
        Self { matcher, routes }
    }

    /// Classifies a request. `path` is Envoy's `:path` (query included); `body` is the request
    /// body when Envoy sends it (`with_request_body`).
    ///
    /// Every decision is taken on the path Quay's router will see ([`RouterPath`]), never on
    /// the raw prefix: `//api/…` is the API to Werkzeug, so it is the API here.
    pub fn classify(&self, method: &str, path: &str, body: Option<&str>) -> RouteOutcome {
        let target = match RouterPath::parse(path) {
            Ok(target) => target,
            Err(why) => return RouteOutcome::Ambiguous(why),
        };
        match (target.area, method) {
            (Area::Other, _) => RouteOutcome::NotProtected,
            // Quay's API resources define `options` (`ApiResource.options` in
            // `endpoints/api/__init__.py`: an empty 200 with no scope), and it runs behind the
            // API's decorators, `process_oauth` included: a bearer token is authenticated there
            // (and an unknown SSO subject becomes a Quay user). So it needs a valid token, and no
            // scope. A browser's CORS preflight carries no token and passes as before.
            (Area::Api, "OPTIONS") => RouteOutcome::Requires(Vec::new()),
            // The registry's views are plain Flask routes: Flask answers OPTIONS from the rule's
            // methods (`provide_automatic_options`) and runs no view.
            (Area::Registry, "OPTIONS") => RouteOutcome::NotProtected,
            (Area::Registry, _) => classify_registry(method, target.path, target.query),
            (Area::Api, _) => self.classify_api(method, target.path, body),
        }
    }

    fn classify_api(&self, method: &str, path: &str, body: Option<&str>) -> RouteOutcome {
        // Werkzeug's pick; when that rule exists only with a Quay feature on, also what the
        // path resolves to with the feature off, and so on: Quay serves one of them, so the
        // request needs all of them.
        let mut excluded = Vec::new();
        let mut required: Vec<Permission> = Vec::new();
        while let Some((rule, route, params)) = self.match_api_excluding(method, path, &excluded) {
            let Some(permissions) = need_permissions(route.need, &params, body) else {
                if excluded.is_empty() {
                    return RouteOutcome::Unclassified;
                }
                // A fall-through whose name is outside Quay's grammar names no resource
                // Quay can hold (its view answers 404): our grammar (`is_repository_path`,
                // `is_namespace_name`) accepts every name Quay's own (`util/names.py`,
                // `util/validation.py`) does, and Quay creates no name outside its own. The
                // route oracle (tests/route_oracle.rs) asks Quay which names those are.
                return RouteOutcome::Requires(required);
            };
            for permission in permissions {
                if !required.contains(&permission) {
                    required.push(permission);
                }
            }
            if !route.feature_gated {
                return RouteOutcome::Requires(required);
            }
            excluded.push(rule);
        }
        if excluded.is_empty() {
            RouteOutcome::Unclassified
        } else {
            // With the feature off nothing matches: Quay answers 404.
            RouteOutcome::Requires(required)
        }
    }

    /// The Quay API route a request matches (`path` without its query).
    pub fn api_route(&self, method: &str, path: &str) -> Option<&'static ApiRoute> {
        self.match_api(method, path).map(|(route, _)| route)
    }

    /// The route Quay's router picks for `method` on `path` (as the router sees it), with the
    /// values its converters took.
    fn match_api<'p>(
        &self,
        method: &str,
        path: &'p str,
    ) -> Option<(&'static ApiRoute, ApiParams<'p>)> {
        self.match_api_excluding(method, path, &[])
            .map(|(_, route, params)| (route, params))
    }

    fn match_api_excluding<'p>(
        &self,
        method: &str,
        path: &'p str,
        excluded: &[usize],
    ) -> Option<(usize, &'static ApiRoute, ApiParams<'p>)> {
        let found = self.matcher.find_excluding(method, path, excluded)?;
        // HEAD is served by Flask's GET view.
        let method = if method == "HEAD" { "GET" } else { method };
        let route = *self.routes.get(&(found.rule, method))?;
        let params = ApiParams {
            repository: found.value("repository"),
            namespace: found.value("orgname"),
        };
        Some((found.rule, route, params))
    }
}

/// Parameters a matched API route took from the path.
#[derive(Debug, Default)]
struct ApiParams<'p> {
    /// `<apirepopath:repository>`: `namespace/name`, the name possibly nested.
    repository: Option<&'p str>,
    namespace: Option<&'p str>,
}

fn need_permissions(
    need: ApiNeed,
    params: &ApiParams,
    body: Option<&str>,
) -> Option<Vec<Permission>> {
    Some(match need {
        ApiNeed::Authenticated => Vec::new(),
        ApiNeed::Repository(scope) => {
            let (namespace, name) = params.repository?.split_once('/')?;
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

/// Which part of Quay a request reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// `/api/…`: Quay's API v1.
    Api,
    /// `/v2/…`: the registry (OCI distribution API).
    Registry,
    /// Everything else: the UI, static files, `/oauth`, health.
    Other,
}

/// A request target as Quay's router will see it: the one normalisation every later step
/// (classification, the challenge's flavour, body reading) uses.
///
/// Gunicorn puts the percent-decoded path into `PATH_INFO` and keeps repeated slashes;
/// Werkzeug's `MapAdapter.match` then strips every leading slash (`path_info.lstrip("/")`)
/// before matching. So `///api/v1/user` is the API, and `/%61pi/v1/user` is too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterPath<'p> {
    pub area: Area,
    /// The path with its leading slashes collapsed to one, as Werkzeug matches it.
    pub path: &'p str,
    /// The raw query string, if any.
    pub query: Option<&'p str>,
}

impl<'p> RouterPath<'p> {
    /// Splits Envoy's `:path` and decides the area on what Quay's router sees. A path whose
    /// percent-decoded form would reach the API or the registry is ambiguous: Quay's names
    /// never need an escape there, and two decoders may disagree on it.
    pub fn parse(target: &'p str) -> Result<Self, &'static str> {
        let (raw_path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let path = collapse_leading_slashes(raw_path);
        if raw_path.contains('%') {
            let decoded = percent_decode(raw_path.as_bytes(), false);
            let decoded = String::from_utf8_lossy(&decoded);
            if area_of(collapse_leading_slashes(&decoded)) != Area::Other {
                return Err(
                    "percent-encoded characters are not used by Quay's API or registry paths",
                );
            }
            return Ok(Self {
                area: Area::Other,
                path,
                query,
            });
        }
        let area = area_of(path);
        if area != Area::Other {
            check_path_spelling(path)?;
        }
        Ok(Self { area, path, query })
    }
}

/// The area of a request target (path and query), as [`RouterPath::parse`] decides it; an
/// ambiguous spelling counts by what it decodes to, so its denial speaks the right dialect.
pub fn area(target: &str) -> Area {
    match RouterPath::parse(target) {
        Ok(target) => target.area,
        Err(_) => {
            let path = target.split('?').next().unwrap_or_default();
            let decoded = percent_decode(path.as_bytes(), false);
            area_of(collapse_leading_slashes(&String::from_utf8_lossy(&decoded)))
        }
    }
}

fn area_of(path: &str) -> Area {
    if path == "/api" || path.starts_with("/api/") {
        Area::Api
    } else if path == "/v2" || path.starts_with("/v2/") {
        Area::Registry
    } else {
        Area::Other
    }
}

/// `//x` → `/x`: Werkzeug matches `"/" + path_info.lstrip("/")`.
fn collapse_leading_slashes(path: &str) -> &str {
    let slashes = path.len() - path.trim_start_matches('/').len();
    &path[slashes.saturating_sub(1)..]
}

/// Percent-decoding as Python's `urllib.parse.unquote` does it (an invalid escape stays as
/// it is); with `plus_is_space`, `+` is a space first, as in form and query decoding.
fn percent_decode(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let hex = |byte: u8| (byte as char).to_digit(16).map(|digit| digit as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        match input[index] {
            b'%' if index + 2 < input.len() => {
                match (hex(input[index + 1]), hex(input[index + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        index += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            byte => out.push(byte),
        }
        index += 1;
    }
    out
}

/// The query parameters of a blob-upload POST that decide what it needs: Werkzeug decodes
/// `request.args` once (`parse_qsl`: split on `&`, `+` is a space, percent-escapes decoded
/// in keys and values) and Quay reads `mount` and `from` with `args.get`, the first value.
#[derive(Debug, Default, PartialEq, Eq)]
struct MountParams<'q> {
    from: Option<&'q str>,
}

impl<'q> MountParams<'q> {
    /// Reads `from` (the mount source). A key that only decodes to `from` or `mount`, a repeated
    /// one, or a value that needs decoding is ambiguous: the raw text we would check and the
    /// decoded text Quay acts on could name different repositories.
    fn parse(query: Option<&'q str>) -> Result<Self, &'static str> {
        const MATTERS: [&str; 2] = ["from", "mount"];
        let mut params = Self::default();
        let mut seen = [false; MATTERS.len()];
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
        {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(raw_key.as_bytes(), true);
            let Some(which) = MATTERS.iter().position(|name| name.as_bytes() == key) else {
                continue;
            };
            if raw_key != MATTERS[which] {
                return Err("encoded query key that decodes to mount or from");
            }
            if std::mem::replace(&mut seen[which], true) {
                return Err("repeated mount or from query parameter");
            }
            if raw_value.contains(['%', '+']) {
                return Err("encoded mount or from query value");
            }
            if MATTERS[which] == "from" {
                params.from = Some(raw_value);
            }
        }
        Ok(params)
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
    if path.contains('#') {
        return Err("fragment (#) in path");
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
    // Flask answers HEAD with the GET view, so HEAD issues a token too.
    if rest == "auth" {
        return match method {
            "GET" | "HEAD" => match registry_token::scope_params(query) {
                Ok(scopes) => RouteOutcome::RegistryToken(scopes),
                Err(why) => RouteOutcome::Ambiguous(why),
            },
            _ => RouteOutcome::Unclassified,
        };
    }
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
    // Read from the end, without collecting the segments: the endpoint is in the last three,
    // the repository name is everything before it.
    let count = rest.split('/').count();
    let mut from_end = rest.rsplit('/');
    let (last, second, third) = (from_end.next(), from_end.next(), from_end.next());
    let read = matches!(method, "GET" | "HEAD");
    // (segments the endpoint takes at the end, scope for this method)
    let endpoint: Option<(usize, QuayScope)> = match (third, second, last) {
        (_, Some("manifests"), Some(_)) => match method {
            "GET" | "HEAD" => Some((2, RepoRead)),
            "PUT" | "DELETE" => Some((2, RepoWrite)),
            _ => None,
        },
        (Some("blobs"), Some("uploads"), Some("")) => (method == "POST").then_some((3, RepoWrite)),
        (Some("blobs"), Some("uploads"), Some(_)) => {
            matches!(method, "GET" | "PATCH" | "PUT" | "DELETE").then_some((3, RepoWrite))
        }
        (_, Some("blobs"), Some(_)) => match method {
            "GET" | "HEAD" => Some((2, RepoRead)),
            "DELETE" => Some((2, RepoWrite)),
            _ => None,
        },
        (_, Some("tags"), Some("list")) => read.then_some((2, RepoRead)),
        (_, Some("referrers"), Some(_)) => read.then_some((2, RepoRead)),
        _ => None,
    };
    let Some((taken, scope)) = endpoint else {
        return RouteOutcome::Unclassified;
    };
    if count < taken + 2 || last == Some("") && !(taken == 3 && method == "POST") {
        return RouteOutcome::Unclassified;
    }
    // The `count - taken` (at least two) segments before the endpoint, as one slice.
    let Some((namespace, name)) = rest
        .rsplitn(taken + 1, '/')
        .last()
        .and_then(|repository| repository.split_once('/'))
    else {
        return RouteOutcome::Unclassified;
    };
    if !is_namespace_name(namespace) || !is_repository_path(name) {
        return RouteOutcome::Unclassified;
    }
    let mut required = vec![Permission::repository(scope, namespace, name)];
    // Cross-repository blob mount: pull on the source as well as push on the target.
    if taken == 3 && method == "POST" {
        let params = match MountParams::parse(query) {
            Ok(params) => params,
            Err(why) => return RouteOutcome::Ambiguous(why),
        };
        let from = params.from;
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
                // Gated by REPO_MIRROR: without it, the repository `mirror/health`.
                repo(RepoRead, "mirror", "health"),
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

    #[test]
    fn router_path_is_what_werkzeug_matches() {
        let parsed = |target| RouterPath::parse(target).map(|t| (t.area, t.path, t.query));
        assert_eq!(
            parsed("///api/v1/user/?x=1"),
            Ok((Area::Api, "/api/v1/user/", Some("x=1")))
        );
        assert_eq!(parsed("//v2/"), Ok((Area::Registry, "/v2/", None)));
        assert_eq!(
            parsed("//oauth/authorize"),
            Ok((Area::Other, "/oauth/authorize", None))
        );
        assert_eq!(parsed(""), Ok((Area::Other, "", None)));
        assert!(parsed("/%61pi/v1/user").is_err());
        assert!(parsed("/%2F%2Fv2/").is_err());
        assert!(parsed("/api/v1/user#frag").is_err());
        assert_eq!(
            parsed("/static/a%20b"),
            Ok((Area::Other, "/static/a%20b", None))
        );
        assert_eq!(area("/%76%32/x"), Area::Registry);
        assert_eq!(area("//api/v1/user"), Area::Api);
    }

    #[test]
    fn percent_decoding_matches_python_unquote() {
        let decode = |s: &str, plus| {
            String::from_utf8_lossy(&percent_decode(s.as_bytes(), plus)).into_owned()
        };
        assert_eq!(decode("fr%6Fm", false), "from");
        assert_eq!(decode("a+b%2", true), "a b%2");
        assert_eq!(decode("%zz%", false), "%zz%");
        assert_eq!(decode("%41%4a", false), "AJ");
    }

    #[test]
    fn mount_params_are_read_as_werkzeug_decodes_them() {
        assert_eq!(
            MountParams::parse(Some("mount=sha256:a&from=acme/base&digest=x%20y")),
            Ok(MountParams {
                from: Some("acme/base")
            })
        );
        assert_eq!(MountParams::parse(None), Ok(MountParams::default()));
        for query in [
            "fr%6Fm=x/y",
            "from=a/b&from=c/d",
            "mount=a&mount=b",
            "from=a%2Fb",
            "%66rom=a/b",
        ] {
            assert!(MountParams::parse(Some(query)).is_err(), "{query}");
        }
    }

    /// Item 12: nested names and names ending in a route word resolve as Werkzeug resolves
    /// them (greedy `apirepopath`, more static parts first, methods checked at the leaf).
    #[test]
    fn api_repository_names_resolve_as_quays_router_does() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            (
                "GET",
                "/api/v1/repository/acme/team/app".to_string(),
                repo(RepoRead, "acme", "team/app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/team/app/tag/".into(),
                repo(RepoRead, "acme", "team/app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/build/tokens/".into(),
                repo(RepoAdmin, "acme", "app/build"),
            ),
            (
                "PUT",
                "/api/v1/repository/acme/app/tag/changestate".into(),
                // Gated by REPO_MIRROR: without it, the tag view of `acme/app`.
                RouteOutcome::Requires(vec![
                    Permission::repository(RepoAdmin, "acme", "app/tag"),
                    Permission::repository(RepoWrite, "acme", "app"),
                ]),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/build/logs".into(),
                repo(RepoRead, "acme", "app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/build/b-1/logs".into(),
                repo(RepoRead, "acme", "app"),
            ),
            (
                "DELETE",
                "/api/v1/repository/acme/app/tag/".into(),
                RouteOutcome::Unclassified,
            ),
            (
                "DELETE",
                "/api/v1/repository/acme/app/tag".into(),
                repo(RepoAdmin, "acme", "app/tag"),
            ),
            (
                "GET",
                format!("/api/v1/repository/acme/app/manifest/{digest}"),
                repo(RepoRead, "acme", "app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/manifest/latest".into(),
                repo(RepoRead, "acme", "app/manifest/latest"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/".into(),
                RouteOutcome::Unclassified,
            ),
            (
                "HEAD",
                "/api/v1/repository/acme/app".into(),
                repo(RepoRead, "acme", "app"),
            ),
            (
                "GET",
                "/api/v1/repository/acme/app/autoprunepolicy/p-1".into(),
                RouteOutcome::Requires(vec![
                    Permission::repository(RepoAdmin, "acme", "app"),
                    Permission::repository(RepoRead, "acme", "app/autoprunepolicy/p-1"),
                ]),
            ),
            // Quay's `ApiResource.options` authenticates the caller: a valid token, no scope.
            (
                "OPTIONS",
                "/api/v1/repository/acme/app".into(),
                RouteOutcome::Requires(vec![]),
            ),
            (
                "OPTIONS",
                "/v2/acme/app/manifests/latest".into(),
                RouteOutcome::NotProtected,
            ),
            // With AUTO_PRUNE off, Quay serves the repository view of
            // `acme/app/autoprunepolicy/P1`, a name Quay never creates (upper case): 404.
            (
                "DELETE",
                "/api/v1/repository/acme/app/autoprunepolicy/P1".into(),
                repo(RepoAdmin, "acme", "app"),
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(classify(method, &path), expected, "{method} {path}");
        }
    }

    /// Every converter regex of the table compiles: a part without one could never match, and
    /// its requests would fall through to a rule with other permissions.
    #[test]
    fn every_api_rule_compiles() {
        assert_eq!(RouteTable::new().matcher.uncompiled(), 0);
    }
}
