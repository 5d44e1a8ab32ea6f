//! Quay's scopes, the resources they apply to, and grants: the vocabulary shared by the route
//! table (what a request needs) and the policy (what an identity holds).
//!
//! Quay's scopes (its `auth/scopes.py`): `repo:read` ⊂ `repo:write` ⊂ `repo:admin`,
//! `repo:create`, `user:read` ⊂ `user:admin`, `org:admin`, `super:user`. Registry actions map
//! as Quay maps them: `pull` = `repo:read`, `push` = `repo:write`, `delete` = `repo:write`
//! (Quay demands write to delete), `*` = `repo:admin`.

use std::fmt;
use std::sync::Arc;

/// One of Quay's OAuth scopes, plus the registry catalog scope of the Docker token spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuayScope {
    RepoRead,
    RepoWrite,
    RepoAdmin,
    RepoCreate,
    UserRead,
    UserAdmin,
    OrgAdmin,
    SuperUser,
    RegistryCatalog,
}

impl QuayScope {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "repo:read" => Self::RepoRead,
            "repo:write" => Self::RepoWrite,
            "repo:admin" => Self::RepoAdmin,
            "repo:create" => Self::RepoCreate,
            "user:read" => Self::UserRead,
            "user:admin" => Self::UserAdmin,
            "org:admin" => Self::OrgAdmin,
            "super:user" => Self::SuperUser,
            "registry:catalog:*" => Self::RegistryCatalog,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RepoRead => "repo:read",
            Self::RepoWrite => "repo:write",
            Self::RepoAdmin => "repo:admin",
            Self::RepoCreate => "repo:create",
            Self::UserRead => "user:read",
            Self::UserAdmin => "user:admin",
            Self::OrgAdmin => "org:admin",
            Self::SuperUser => "super:user",
            Self::RegistryCatalog => "registry:catalog:*",
        }
    }

    /// Whether holding `self` on a resource gives `required` on the same resource.
    pub fn implies(self, required: QuayScope) -> bool {
        use QuayScope::*;
        if self == required || self == SuperUser {
            return true;
        }
        matches!(
            (self, required),
            (RepoAdmin, RepoWrite | RepoRead)
                | (RepoWrite, RepoRead)
                | (UserAdmin, UserRead)
                // An organization's admins administer all its repositories, as in Quay.
                | (OrgAdmin, RepoAdmin | RepoWrite | RepoRead | RepoCreate)
        )
    }

    fn is_repository_scope(self) -> bool {
        matches!(self, Self::RepoRead | Self::RepoWrite | Self::RepoAdmin)
    }

    fn is_namespace_scope(self) -> bool {
        matches!(self, Self::RepoCreate | Self::OrgAdmin)
    }

    fn is_global_scope(self) -> bool {
        matches!(
            self,
            Self::UserRead | Self::UserAdmin | Self::SuperUser | Self::RegistryCatalog
        )
    }
}

/// The thing a required scope applies to, taken from the request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Repository {
        namespace: String,
        name: String,
    },
    Namespace(String),
    /// The caller's own account (`/api/v1/user/…`), or the whole installation (superuser).
    Global,
    /// Some resource, whichever: listings and searches, whose results Quay filters itself.
    AnyResource,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Repository { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::Namespace(namespace) => write!(f, "{namespace}"),
            Self::Global => write!(f, "*"),
            Self::AnyResource => write!(f, "any resource"),
        }
    }
}

/// A scope required on a target: what one request needs (a request may need several).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permission {
    pub scope: QuayScope,
    pub target: Target,
}

impl Permission {
    pub fn repository(scope: QuayScope, namespace: &str, name: &str) -> Self {
        Self {
            scope,
            target: Target::Repository {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
        }
    }

    pub fn namespace(scope: QuayScope, namespace: &str) -> Self {
        Self {
            scope,
            target: Target::Namespace(namespace.to_string()),
        }
    }

    pub fn global(scope: QuayScope) -> Self {
        Self {
            scope,
            target: Target::Global,
        }
    }

    /// The Docker token-spec scope string for registry challenges
    /// (`repository:acme/app:pull`), where one exists.
    pub fn docker_scope(&self) -> Option<String> {
        match (&self.target, self.scope) {
            (Target::Repository { namespace, name }, scope) => {
                let action = match scope {
                    QuayScope::RepoRead => "pull",
                    QuayScope::RepoWrite => "pull,push",
                    _ => "*",
                };
                Some(format!("repository:{namespace}/{name}:{action}"))
            }
            (Target::Global, QuayScope::RegistryCatalog) => Some("registry:catalog:*".into()),
            _ => None,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            Target::Global | Target::AnyResource => write!(f, "{}", self.scope.name()),
            _ => write!(f, "{} on {}", self.scope.name(), self.target),
        }
    }
}

/// A name in a grant's resource: exact, `*` (any), or `prefix/*` (anything below a path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    Exact(String),
    Any,
    Below(String),
}

impl NamePattern {
    fn parse(text: &str) -> Option<Self> {
        if text == "*" {
            return Some(Self::Any);
        }
        if let Some(prefix) = text.strip_suffix("/*") {
            return is_repository_path(prefix).then(|| Self::Below(prefix.to_string()));
        }
        is_repository_path(text).then(|| Self::Exact(text.to_string()))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Any => true,
            Self::Below(prefix) => name
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => write!(f, "{name}"),
            Self::Any => write!(f, "*"),
            Self::Below(prefix) => write!(f, "{prefix}/*"),
        }
    }
}

/// Which resources a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourcePattern {
    Everything,
    Namespace(NamePattern),
    Repository {
        namespace: NamePattern,
        name: NamePattern,
    },
}

/// A scope bound to a resource pattern: what the policy gives an identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub scope: QuayScope,
    pub on: ResourcePattern,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrantSyntaxError(pub String);

impl Grant {
    /// Parses either notation:
    /// - Quay scopes: `super:user`, `user:read`, `repo:write on acme/*`, `org:admin on acme`,
    ///   `repo:create on acme`, `repo:read on */*`
    /// - Docker token scopes: `repository:acme/app:pull,push`, `repository:acme/*:pull`,
    ///   `registry:catalog:*`
    ///
    /// One text may give several grants (`pull,push` is read and write).
    pub fn parse(text: &str) -> Result<Vec<Grant>, GrantSyntaxError> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("repository:") {
            return parse_docker_grant(rest);
        }
        let (scope_text, on_text) = match text.split_once(" on ") {
            Some((scope, on)) => (scope.trim(), Some(on.trim())),
            None => (text, None),
        };
        let scope = QuayScope::from_name(scope_text).ok_or_else(|| {
            GrantSyntaxError(format!(
                "unknown scope {scope_text:?}: expected repo:read, repo:write, repo:admin, \
                 repo:create, user:read, user:admin, org:admin, super:user, registry:catalog:*, \
                 or repository:NS/REPO:ACTIONS"
            ))
        })?;
        let on = if scope.is_global_scope() {
            if let Some(on) = on_text {
                return Err(GrantSyntaxError(format!(
                    "{} applies to the whole account or installation; remove \"on {on}\"",
                    scope.name()
                )));
            }
            ResourcePattern::Everything
        } else {
            let Some(on) = on_text else {
                return Err(GrantSyntaxError(format!(
                    "{} needs a resource: \"{} on NAMESPACE{}\"",
                    scope.name(),
                    scope.name(),
                    if scope.is_repository_scope() {
                        "/REPOSITORY"
                    } else {
                        ""
                    }
                )));
            };
            if scope.is_namespace_scope() {
                if on.contains('/') {
                    return Err(GrantSyntaxError(format!(
                        "{} applies to a namespace, got {on:?}",
                        scope.name()
                    )));
                }
                ResourcePattern::Namespace(parse_namespace_pattern(on)?)
            } else {
                parse_repository_pattern(on)?
            }
        };
        Ok(vec![Grant { scope, on }])
    }

    /// Whether this grant gives `permission`.
    pub fn satisfies(&self, permission: &Permission) -> bool {
        if !self.scope.implies(permission.scope) {
            return false;
        }
        match (&self.on, &permission.target) {
            (ResourcePattern::Everything, _) => true,
            // Holding the scope anywhere is enough to list; Quay filters what is shown.
            (_, Target::AnyResource) => true,
            (
                ResourcePattern::Repository { namespace, name },
                Target::Repository {
                    namespace: target_namespace,
                    name: target_name,
                },
            ) => namespace.matches(target_namespace) && name.matches(target_name),
            (ResourcePattern::Namespace(namespace), Target::Repository { namespace: ns, .. })
            | (ResourcePattern::Namespace(namespace), Target::Namespace(ns)) => {
                namespace.matches(ns)
            }
            _ => false,
        }
    }
}

impl Grant {
    /// Whether everything `other` grants, this grant grants too.
    pub fn covers(&self, other: &Grant) -> bool {
        if !self.scope.implies(other.scope) {
            return false;
        }
        match (&self.on, &other.on) {
            (ResourcePattern::Everything, _) => true,
            (_, ResourcePattern::Everything) => false,
            (ResourcePattern::Namespace(mine), ResourcePattern::Namespace(theirs))
            | (
                ResourcePattern::Namespace(mine),
                ResourcePattern::Repository {
                    namespace: theirs, ..
                },
            ) => name_pattern_covers(mine, theirs),
            (
                ResourcePattern::Repository { namespace, name },
                ResourcePattern::Repository {
                    namespace: other_namespace,
                    name: other_name,
                },
            ) => {
                name_pattern_covers(namespace, other_namespace)
                    && name_pattern_covers(name, other_name)
            }
            (ResourcePattern::Repository { .. }, ResourcePattern::Namespace(_)) => false,
        }
    }
}

fn name_pattern_covers(mine: &NamePattern, theirs: &NamePattern) -> bool {
    match (mine, theirs) {
        (NamePattern::Any, _) => true,
        (NamePattern::Exact(a), NamePattern::Exact(b)) => a == b,
        (NamePattern::Below(prefix), NamePattern::Exact(name)) => {
            mine.matches(name) && name != prefix
        }
        (NamePattern::Below(prefix), NamePattern::Below(other)) => {
            other == prefix
                || other
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        }
        _ => false,
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.on {
            ResourcePattern::Everything => write!(f, "{}", self.scope.name()),
            ResourcePattern::Namespace(namespace) => {
                write!(f, "{} on {namespace}", self.scope.name())
            }
            ResourcePattern::Repository { namespace, name } => {
                write!(f, "{} on {namespace}/{name}", self.scope.name())
            }
        }
    }
}

fn parse_docker_grant(rest: &str) -> Result<Vec<Grant>, GrantSyntaxError> {
    let Some((path, actions)) = rest.rsplit_once(':') else {
        return Err(GrantSyntaxError(format!(
            "expected repository:NAMESPACE/REPOSITORY:ACTIONS, got \"repository:{rest}\""
        )));
    };
    let on = parse_repository_pattern(path)?;
    let mut grants = Vec::new();
    for action in actions.split(',') {
        let scope = match action.trim() {
            "pull" => QuayScope::RepoRead,
            "push" | "delete" => QuayScope::RepoWrite,
            "*" => QuayScope::RepoAdmin,
            other => {
                return Err(GrantSyntaxError(format!(
                    "unknown registry action {other:?}: expected pull, push, delete or *"
                )));
            }
        };
        if !grants.iter().any(|grant: &Grant| grant.scope == scope) {
            grants.push(Grant {
                scope,
                on: on.clone(),
            });
        }
    }
    Ok(grants)
}

fn parse_namespace_pattern(text: &str) -> Result<NamePattern, GrantSyntaxError> {
    if text == "*" {
        return Ok(NamePattern::Any);
    }
    if is_namespace_name(text) {
        return Ok(NamePattern::Exact(text.to_string()));
    }
    Err(GrantSyntaxError(format!(
        "{text:?} is not a Quay namespace (lowercase letters, digits, '_', '.', '-') or *"
    )))
}

fn parse_repository_pattern(text: &str) -> Result<ResourcePattern, GrantSyntaxError> {
    let bad = || {
        GrantSyntaxError(format!(
            "{text:?} is not a repository pattern: expected NAMESPACE/REPOSITORY, NAMESPACE/*, \
             NAMESPACE/PATH/* or */*"
        ))
    };
    let (namespace, name) = text.split_once('/').ok_or_else(bad)?;
    let namespace = parse_namespace_pattern(namespace).map_err(|_| bad())?;
    let name = NamePattern::parse(name).ok_or_else(bad)?;
    if namespace == NamePattern::Any && name != NamePattern::Any {
        // `*/app` would match every namespace's `app`: almost never meant, so refuse it.
        return Err(GrantSyntaxError(format!(
            "{text:?}: a wildcard namespace needs a wildcard repository (*/*)"
        )));
    }
    Ok(ResourcePattern::Repository { namespace, name })
}

/// A Quay namespace (user or organization) name: lowercase letters, digits, `_`, `.`, `-`,
/// not starting with punctuation other than `_`, not `.`/`..`.
pub fn is_namespace_name(text: &str) -> bool {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    text.len() <= 255
        && (first.is_ascii_lowercase() || first.is_ascii_digit() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
}

/// One segment of a repository name (Quay allows nested names such as `team/app`).
pub fn is_repository_segment(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && text.len() <= 255
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
}

/// A repository path below a namespace: segments separated by single `/`.
pub fn is_repository_path(text: &str) -> bool {
    text.split('/').all(is_repository_segment)
}

/// Parses a scope list: the `scope` of a token-exchange request and of an exchanged token
/// (RFC 8693 §2.1 and RFC 9068 §2.2.3: one string of space-separated items). Our grant
/// notation has spaces (`repo:write on acme/*`), so the word `on` joins its two neighbours
/// into one item: `repo:read on acme/app super:user repository:acme/lib:pull,push` is three
/// items. Each item is a grant in either notation ([`Grant::parse`]).
pub fn parse_scope_list(text: &str) -> Result<Vec<Grant>, GrantSyntaxError> {
    let mut items: Vec<String> = Vec::new();
    let mut words = text.split_ascii_whitespace();
    while let Some(word) = words.next() {
        if word == "on" {
            let (Some(previous), Some(next)) = (items.last_mut(), words.next()) else {
                return Err(GrantSyntaxError(
                    "`on` must stand between a scope and a resource (`repo:read on acme/app`)"
                        .into(),
                ));
            };
            if next == "on" || previous.contains(" on ") {
                return Err(GrantSyntaxError(format!(
                    "{previous:?} is followed by a second `on`"
                )));
            }
            previous.push_str(" on ");
            previous.push_str(next);
        } else {
            items.push(word.to_string());
        }
    }
    let mut grants: Vec<Grant> = Vec::new();
    for item in &items {
        for grant in Grant::parse(item)? {
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
    }
    Ok(grants)
}

/// The grants a request was allowed with, and the `scopes` identity header they render to
/// (comma-separated, the grant notation). Built once per policy outcome and shared by every
/// Check that reuses it (a verified-token cache hit): cloning is two reference counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Granted {
    pub grants: Arc<[Grant]>,
    pub header: Arc<str>,
}

impl Granted {
    pub fn new(grants: Vec<Grant>) -> Self {
        Self {
            header: join_grants(&grants, ",").into(),
            grants: grants.into(),
        }
    }
}

/// A scope list in the Quay notation, space-separated ([`parse_scope_list`] reads it back).
pub fn format_scope_list(grants: &[Grant]) -> String {
    join_grants(grants, " ")
}

fn join_grants(grants: &[Grant], separator: &str) -> String {
    grants
        .iter()
        .map(Grant::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

/// What a token exchange issues: for each requested grant, itself when some policy grant
/// covers it, else each policy grant it covers (a request broader than the policy is
/// narrowed to what the policy gives inside it). No request (`scope` absent): every policy
/// grant. Duplicates are dropped; an empty result means nothing requested is granted.
pub fn intersect_grants(requested: Option<&[Grant]>, policy: &[Grant]) -> Vec<Grant> {
    let mut issued: Vec<Grant> = Vec::new();
    let mut issue = |grant: &Grant| {
        if !issued.contains(grant) {
            issued.push(grant.clone());
        }
    };
    match requested {
        None => policy.iter().for_each(&mut issue),
        Some(requested) => {
            for wanted in requested {
                if policy.iter().any(|held| held.covers(wanted)) {
                    issue(wanted);
                } else {
                    policy
                        .iter()
                        .filter(|held| wanted.covers(held))
                        .for_each(&mut issue);
                }
            }
        }
    }
    issued
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> Vec<Grant> {
        Grant::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    fn allows(grants: &str, permission: &Permission) -> bool {
        grant(grants).iter().any(|g| g.satisfies(permission))
    }

    #[test]
    fn both_notations_parse_to_the_same_grants() {
        assert_eq!(
            grant("repository:acme/app:pull,push"),
            [
                grant("repo:read on acme/app"),
                grant("repo:write on acme/app")
            ]
            .concat()
        );
        assert_eq!(
            grant("repository:acme/*:pull"),
            grant("repo:read on acme/*")
        );
        assert_eq!(
            grant("registry:catalog:*")[0].scope,
            QuayScope::RegistryCatalog
        );
        assert_eq!(
            grant("repository:acme/app:*")[0].scope,
            QuayScope::RepoAdmin
        );
    }

    #[test]
    fn grant_display_round_trips() {
        for text in [
            "super:user",
            "repo:write on acme/*",
            "org:admin on acme",
            "repo:read on acme/team/app",
            "repo:read on */*",
            "repo:admin on acme/team/*",
        ] {
            assert_eq!(grant(text)[0].to_string(), text);
        }
    }

    #[test]
    fn scope_implication_follows_quay() {
        let app = |scope| Permission::repository(scope, "acme", "app");
        assert!(allows("repo:admin on acme/app", &app(QuayScope::RepoRead)));
        assert!(allows("repo:write on acme/app", &app(QuayScope::RepoRead)));
        assert!(!allows("repo:read on acme/app", &app(QuayScope::RepoWrite)));
        assert!(!allows(
            "repo:write on acme/app",
            &app(QuayScope::RepoAdmin)
        ));
        assert!(allows("org:admin on acme", &app(QuayScope::RepoAdmin)));
        assert!(allows(
            "org:admin on acme",
            &Permission::namespace(QuayScope::RepoCreate, "acme")
        ));
        assert!(!allows(
            "org:admin on acme",
            &Permission::repository(QuayScope::RepoRead, "other", "app")
        ));
        assert!(allows("super:user", &app(QuayScope::RepoAdmin)));
        assert!(allows(
            "user:admin",
            &Permission::global(QuayScope::UserRead)
        ));
        assert!(!allows(
            "user:read",
            &Permission::global(QuayScope::UserAdmin)
        ));
        assert!(!allows(
            "repo:admin on */*",
            &Permission::global(QuayScope::SuperUser)
        ));
        assert!(!allows(
            "repo:admin on */*",
            &Permission::namespace(QuayScope::OrgAdmin, "acme")
        ));
    }

    #[test]
    fn resource_patterns_match_exactly_what_they_say() {
        let read = |ns: &str, name: &str| Permission::repository(QuayScope::RepoRead, ns, name);
        assert!(allows("repo:read on acme/*", &read("acme", "app")));
        assert!(allows("repo:read on acme/*", &read("acme", "team/app")));
        assert!(!allows("repo:read on acme/*", &read("acmex", "app")));
        assert!(allows(
            "repo:read on acme/team/*",
            &read("acme", "team/app")
        ));
        assert!(!allows("repo:read on acme/team/*", &read("acme", "team")));
        assert!(!allows(
            "repo:read on acme/team/*",
            &read("acme", "teamx/app")
        ));
        assert!(!allows("repo:read on acme/app", &read("acme", "app/sub")));
        assert!(allows("repo:read on */*", &read("any", "thing")));
    }

    #[test]
    fn malformed_grants_are_refused_with_reasons() {
        for (text, expected) in [
            ("repo:write", "needs a resource"),
            ("super:user on acme", "remove"),
            ("repo:read on acme", "not a repository pattern"),
            ("repo:read on Acme/app", "not a repository pattern"),
            ("repo:read on acme/../x", "not a repository pattern"),
            ("repo:read on */app", "wildcard namespace"),
            ("org:admin on acme/app", "applies to a namespace"),
            ("repository:acme/app:pull,fly", "unknown registry action"),
            ("repo:fly on acme/app", "unknown scope"),
            ("repository:acme", "expected repository:"),
        ] {
            let error = Grant::parse(text).expect_err(text);
            assert!(error.0.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn coverage_between_grants() {
        let covers = |a: &str, b: &str| grant(a)[0].covers(&grant(b)[0]);
        assert!(covers("repo:write on acme/*", "repo:read on acme/app"));
        assert!(covers("repo:write on acme/*", "repo:read on acme/team/*"));
        assert!(!covers("repo:read on acme/*", "repo:write on acme/app"));
        assert!(!covers("repo:write on acme/app", "repo:write on acme/*"));
        assert!(covers("org:admin on acme", "repo:admin on acme/*"));
        assert!(covers("super:user", "repo:admin on */*"));
        assert!(!covers("repo:admin on */*", "super:user"));
        assert!(covers("repo:read on */*", "repo:read on acme/app"));
    }

    #[test]
    fn docker_scope_strings_for_challenges() {
        assert_eq!(
            Permission::repository(QuayScope::RepoWrite, "acme", "app")
                .docker_scope()
                .as_deref(),
            Some("repository:acme/app:pull,push")
        );
        assert_eq!(Permission::global(QuayScope::UserRead).docker_scope(), None);
    }

    fn list(text: &str) -> Vec<Grant> {
        parse_scope_list(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn scope_lists_join_on_with_its_neighbours_and_read_back_what_they_format() {
        let grants = list("repo:read on acme/app super:user repository:acme/lib:pull,push");
        assert_eq!(
            format_scope_list(&grants),
            "repo:read on acme/app super:user repo:read on acme/lib repo:write on acme/lib"
        );
        assert_eq!(list(&format_scope_list(&grants)), grants);
        // Extra spaces, duplicates: the same list.
        assert_eq!(
            list("  repo:read  on   acme/app repo:read on acme/app "),
            list("repo:read on acme/app")
        );
        assert!(list("").is_empty());
        for bad in [
            "on acme/app",
            "repo:read on",
            "repo:read on on",
            "repo:read on acme/app on acme/lib",
            "repo:read acme/app",
            "repo:fly on acme/app",
        ] {
            assert!(parse_scope_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exchange_issues_what_is_asked_within_the_policy_and_narrows_the_rest() {
        let policy = list("repo:write on acme/* repo:read on tools/cli user:read");
        let issued = |requested: Option<&str>| {
            let requested = requested.map(list);
            format_scope_list(&intersect_grants(requested.as_deref(), &policy))
        };
        // Covered: issued as asked (narrower than the policy).
        assert_eq!(
            issued(Some("repo:read on acme/app")),
            "repo:read on acme/app"
        );
        // Broader than the policy: narrowed to the policy grants inside it.
        assert_eq!(
            issued(Some("repo:admin on */*")),
            "repo:write on acme/* repo:read on tools/cli"
        );
        assert_eq!(
            issued(Some("repo:write on tools/cli")),
            "repo:read on tools/cli"
        );
        // Nothing of it granted.
        assert_eq!(
            issued(Some("repo:read on other/app org:admin on other")),
            ""
        );
        // `super:user` covers everything: narrowed to the whole policy.
        assert_eq!(issued(Some("super:user")), format_scope_list(&policy));
        // Absent: every policy grant; duplicates dropped.
        assert_eq!(issued(None), format_scope_list(&policy));
        assert_eq!(
            issued(Some("repo:read on acme/app repository:acme/app:pull")),
            "repo:read on acme/app"
        );
    }
}
