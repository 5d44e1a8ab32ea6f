//! Quay's registry token endpoint, `GET /v2/auth` (`endpoints/v2/v2auth.py`): the `scope`
//! parameters read as Quay reads them, and cut down to what the policy grants.
//!
//! Quay reads `request.args.getlist("scope")` (Werkzeug 3: `parse_qsl` with
//! `keep_blank_values`, split on `&`, `+` a space, percent-escapes decoded once) and matches
//! each value against
//! `^repository:((?:HOST/)?((?:[.a-zA-Z0-9_-]+/)*[.a-zA-Z0-9_-]+)):((?:push|pull|\*)(?:,(?:push|pull|\*))*)$`
//! with HOST its `SERVER_HOSTNAME`; anything else is a 400 for the whole request. So a scope is
//! judged on exactly the text Quay will act on, and what Quay receives is rewritten by us in one
//! canonical spelling: a scope we cannot read as Quay does is never passed on.

use crate::model::decision::ScopeRewrite;
use crate::model::permission::{Permission, QuayScope, is_namespace_name, is_repository_path};
use crate::route::percent_decode;

/// The decoded `scope` values of a `/v2/auth` query, in order, as `request.args.getlist`
/// returns them. A key that only decodes to `scope` is ambiguous: Envoy's query mutation and
/// Werkzeug might not agree that it is the same parameter.
pub fn scope_params(query: Option<&str>) -> Result<Vec<String>, &'static str> {
    // gunicorn ends the query at a `#` (`urlsplit`) and Envoy may not: the two would read
    // different scopes.
    if query.is_some_and(|query| query.contains('#')) {
        return Err("fragment (#) in the query");
    }
    let mut scopes = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(raw_key.as_bytes(), true) != b"scope" {
            continue;
        }
        if raw_key != "scope" {
            return Err("encoded query key that decodes to scope");
        }
        // Werkzeug re-quotes bytes that are not UTF-8 (`errors="werkzeug.url_quote"`); such a
        // value can never match Quay's grammar, so the lossy form is as good.
        let value = percent_decode(raw_value.as_bytes(), true);
        scopes.push(String::from_utf8_lossy(&value).into_owned());
    }
    Ok(scopes)
}

/// One action of a repository scope (`pull` = `repo:read`, `push` = `repo:write`, `*` =
/// `repo:admin`, as Quay's `_authorize_or_downscope_request` checks them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    All,
}

impl Action {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "pull" => Some(Self::Pull),
            "push" => Some(Self::Push),
            "*" => Some(Self::All),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
            Self::All => "*",
        }
    }

    fn scope(self) -> QuayScope {
        match self {
            Self::Pull => QuayScope::RepoRead,
            Self::Push => QuayScope::RepoWrite,
            Self::All => QuayScope::RepoAdmin,
        }
    }
}

/// A `scope` value read as Quay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRequest {
    /// A repository in a namespace, with the actions asked for (sorted, once each: Quay only
    /// tests `"push" in requested_actions`).
    Repository {
        namespace: String,
        name: String,
        actions: Vec<Action>,
        /// Spelled without Quay's host prefix and without a final newline: Quay reads it the
        /// same whatever its `SERVER_HOSTNAME` is, so it may reach Quay as sent.
        plain: bool,
    },
    /// Matches Quay's grammar but names no repository we can judge: a one-part name (Quay puts
    /// it in its `LIBRARY_NAMESPACE`, which we do not know), or a namespace or name Quay's
    /// own name rules refuse. Never granted.
    Unjudgeable,
    /// Outside Quay's grammar (Quay answers 400) or empty: never passed on.
    Invalid,
}

/// Reads one decoded `scope` value as Quay does. `host` is Quay's `SERVER_HOSTNAME`
/// (`quay.service`): Quay's pattern lets it prefix the name and strips it.
pub fn parse_scope(value: &str, host: &str) -> ScopeRequest {
    // Python's `$` also matches before one final newline, and the groups exclude it.
    let (value, mut plain) = match value.strip_suffix('\n') {
        Some(stripped) => (stripped, false),
        None => (value, true),
    };
    let Some(rest) = value.strip_prefix("repository:") else {
        return ScopeRequest::Invalid;
    };
    // The actions contain no `:`, so the last one ends the name (a HOST may carry a port).
    let Some((name_part, actions_text)) = rest.rsplit_once(':') else {
        return ScopeRequest::Invalid;
    };
    let mut actions = Vec::new();
    for action in actions_text.split(',') {
        match Action::parse(action) {
            Some(action) => actions.push(action),
            None => return ScopeRequest::Invalid,
        }
    }
    actions.sort();
    actions.dedup();
    // `(?:HOST/)?` is tried first and NAME after it, as Python's backtracking does.
    let full_name = match name_part
        .strip_prefix(host)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        Some(stripped) if !host.is_empty() && is_grammar_name(stripped) => {
            plain = false;
            stripped
        }
        _ if is_grammar_name(name_part) => name_part,
        _ => return ScopeRequest::Invalid,
    };
    // `parse_namespace_repository`: the first part is the namespace; one part alone is in
    // the library namespace.
    let Some((namespace, name)) = full_name.split_once('/') else {
        return ScopeRequest::Unjudgeable;
    };
    // A namespace spelled like the host would lose its first part to Quay's prefix strip.
    if namespace == host || !is_namespace_name(namespace) || !is_repository_path(name) {
        return ScopeRequest::Unjudgeable;
    }
    ScopeRequest::Repository {
        namespace: namespace.to_string(),
        name: name.to_string(),
        actions,
        plain,
    }
}

/// `(?:[.a-zA-Z0-9_-]+/)*[.a-zA-Z0-9_-]+`.
fn is_grammar_name(text: &str) -> bool {
    text.split('/').all(|segment| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    })
}

/// What Quay receives: the requests unchanged when every one is granted in full (Quay then
/// reads exactly the values judged here); otherwise the first request cut to the actions
/// `allows` grants, in Quay's grammar, alone — Envoy can set one value per key — or none.
/// A scope left with nothing, or one we cannot judge, is dropped (the Docker token spec lets
/// the server grant less than asked).
pub fn downscope(requests: &[ScopeRequest], allows: impl Fn(&Permission) -> bool) -> ScopeRewrite {
    let granted = granted_scopes(requests, &allows);
    let in_full = requests.iter().all(|request| match request {
        ScopeRequest::Repository {
            namespace,
            name,
            actions,
            plain,
        } => {
            // A host-prefixed spelling is rewritten: if `quay.service` were not Quay's
            // `SERVER_HOSTNAME`, Quay would read the host as the namespace.
            *plain
                && actions
                    .iter()
                    .all(|action| allows(&Permission::repository(action.scope(), namespace, name)))
        }
        ScopeRequest::Unjudgeable | ScopeRequest::Invalid => false,
    });
    match granted.into_iter().next() {
        _ if in_full => ScopeRewrite::Unchanged,
        Some(first) => ScopeRewrite::Only(first),
        None => ScopeRewrite::Removed,
    }
}

/// Each request cut to the actions `allows` grants, in Quay's grammar, in order; requests left
/// with nothing are dropped.
pub fn granted_scopes(
    requests: &[ScopeRequest],
    allows: impl Fn(&Permission) -> bool,
) -> Vec<String> {
    requests
        .iter()
        .filter_map(|request| {
            let ScopeRequest::Repository {
                namespace,
                name,
                actions,
                ..
            } = request
            else {
                return None;
            };
            let granted: Vec<&str> = actions
                .iter()
                .filter(|action| allows(&Permission::repository(action.scope(), namespace, name)))
                .map(|action| action.name())
                .collect();
            (!granted.is_empty())
                .then(|| format!("repository:{namespace}/{name}:{}", granted.join(",")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "quay.example.com";

    fn repo(namespace: &str, name: &str, actions: &[Action]) -> ScopeRequest {
        ScopeRequest::Repository {
            namespace: namespace.into(),
            name: name.into(),
            actions: actions.to_vec(),
            plain: true,
        }
    }

    /// Read through Quay's host prefix or a final newline: never left as sent.
    fn unplain(request: ScopeRequest) -> ScopeRequest {
        match request {
            ScopeRequest::Repository {
                namespace,
                name,
                actions,
                ..
            } => ScopeRequest::Repository {
                namespace,
                name,
                actions,
                plain: false,
            },
            other => other,
        }
    }

    #[test]
    fn scope_grammar_as_quay_reads_it() {
        use Action::*;
        let cases: &[(&str, ScopeRequest)] = &[
            ("repository:acme/app:pull", repo("acme", "app", &[Pull])),
            (
                "repository:acme/app:push,pull",
                repo("acme", "app", &[Pull, Push]),
            ),
            (
                "repository:acme/team/app:pull,pull,*",
                repo("acme", "team/app", &[Pull, All]),
            ),
            (
                "repository:quay.example.com/acme/app:push",
                unplain(repo("acme", "app", &[Push])),
            ),
            // Python's `$` before a final newline.
            (
                "repository:acme/app:pull\n",
                unplain(repo("acme", "app", &[Pull])),
            ),
            // A host that is not Quay's is the namespace, as Quay reads it.
            (
                "repository:other.example.com/acme/app:pull",
                repo("other.example.com", "acme/app", &[Pull]),
            ),
            // The library namespace, and names Quay refuses: never granted.
            ("repository:app:pull", ScopeRequest::Unjudgeable),
            (
                "repository:quay.example.com/app:pull",
                ScopeRequest::Unjudgeable,
            ),
            ("repository:Acme/app:pull", ScopeRequest::Unjudgeable),
            ("repository:acme/App:pull", ScopeRequest::Unjudgeable),
            ("repository:acme/..:pull", ScopeRequest::Unjudgeable),
            // Outside the grammar: Quay answers 400.
            ("", ScopeRequest::Invalid),
            ("registry:catalog:*", ScopeRequest::Invalid),
            ("repository:acme/app:delete", ScopeRequest::Invalid),
            ("repository:acme/app:pull push", ScopeRequest::Invalid),
            ("repository:acme/app:pull,", ScopeRequest::Invalid),
            ("repository:acme//app:pull", ScopeRequest::Invalid),
            ("repository:/acme/app:pull", ScopeRequest::Invalid),
            ("repository:acme/app/:pull", ScopeRequest::Invalid),
            ("repository:acme/app:pull\n\n", ScopeRequest::Invalid),
            (
                "repository:acme/app:pull repository:x/y:push",
                ScopeRequest::Invalid,
            ),
            ("repository:acme/app", ScopeRequest::Invalid),
            ("Repository:acme/app:pull", ScopeRequest::Invalid),
            (" repository:acme/app:pull", ScopeRequest::Invalid),
            ("repository:acme/ap p:pull", ScopeRequest::Invalid),
            ("repository:acme%2Fapp:pull", ScopeRequest::Invalid),
            ("repository:acme/app:PULL", ScopeRequest::Invalid),
            ("repository:acme/аpp:pull", ScopeRequest::Invalid),
        ];
        for (value, expected) in cases {
            assert_eq!(&parse_scope(value, HOST), expected, "{value:?}");
        }
        // Quay on a port: the host carries a `:`.
        assert_eq!(
            parse_scope("repository:localhost:8080/acme/app:pull", "localhost:8080"),
            unplain(repo("acme", "app", &[Pull]))
        );
        // A namespace spelled like the host would lose that part to Quay's strip.
        assert_eq!(
            parse_scope(
                "repository:other.example.com/x/y:pull",
                "other.example.com/x"
            ),
            ScopeRequest::Unjudgeable
        );
    }

    #[test]
    fn scope_params_are_decoded_once_as_werkzeug_does() {
        assert_eq!(
            scope_params(Some(
                "account=a&service=quay&scope=repository%3Aacme%2Fapp%3Apull&scope=x+y&scope"
            )),
            Ok(vec![
                "repository:acme/app:pull".to_string(),
                "x y".to_string(),
                String::new()
            ])
        );
        // Decoded once: `%253A` is `%3A` to Quay, not `:`.
        assert_eq!(
            scope_params(Some("scope=repository%253Aacme")),
            Ok(vec!["repository%3Aacme".to_string()])
        );
        assert_eq!(scope_params(None), Ok(Vec::new()));
        assert!(scope_params(Some("sc%6Fpe=repository:acme/app:push")).is_err());
        assert!(scope_params(Some("scop%65=x&scope=y")).is_err());
        assert!(scope_params(Some("scope=repository:acme/app:pull#&scope=x")).is_err());
        // Not `scope` to Werkzeug either: ignored.
        assert_eq!(scope_params(Some("Scope=x&scope_=y")), Ok(Vec::new()));
    }

    #[test]
    fn downscoping_keeps_only_granted_actions() {
        use Action::*;
        // Grants: write on acme/app, read on acme/team/*.
        let allows = |permission: &Permission| {
            let crate::model::permission::Target::Repository { namespace, name } =
                &permission.target
            else {
                return false;
            };
            match (namespace.as_str(), name.as_str()) {
                ("acme", "app") => QuayScope::RepoWrite.implies(permission.scope),
                ("acme", name) if name.starts_with("team/") => {
                    QuayScope::RepoRead.implies(permission.scope)
                }
                _ => false,
            }
        };
        let requests = [
            repo("acme", "app", &[Pull, Push, All]),
            repo("acme", "team/base", &[Pull, Push]),
            repo("other", "app", &[Pull]),
            ScopeRequest::Unjudgeable,
            ScopeRequest::Invalid,
        ];
        assert_eq!(
            granted_scopes(&requests, allows),
            [
                "repository:acme/app:pull,push",
                "repository:acme/team/base:pull"
            ]
        );
        // Envoy sets one value per key: the first granted one goes alone.
        assert_eq!(
            downscope(&requests, allows),
            ScopeRewrite::Only("repository:acme/app:pull,push".into())
        );
        assert_eq!(downscope(&requests[2..], allows), ScopeRewrite::Removed);
        // All granted in full: Quay reads what was judged, whatever the count.
        assert_eq!(
            downscope(
                &[
                    repo("acme", "app", &[Push, Pull]),
                    repo("acme", "team/x", &[Pull])
                ],
                allows
            ),
            ScopeRewrite::Unchanged
        );
        assert_eq!(downscope(&[], allows), ScopeRewrite::Unchanged);
        // Granted, but spelled with Quay's host: rewritten without it.
        assert_eq!(
            downscope(&[unplain(repo("acme", "app", &[Pull]))], allows),
            ScopeRewrite::Only("repository:acme/app:pull".into())
        );
        // A scope we cannot judge (the library namespace) is never left for Quay to grant.
        assert_eq!(
            downscope(
                &[repo("acme", "app", &[Pull]), ScopeRequest::Unjudgeable],
                allows
            ),
            ScopeRewrite::Only("repository:acme/app:pull".into())
        );
        assert_eq!(
            downscope(&[ScopeRequest::Invalid], allows),
            ScopeRewrite::Removed
        );
    }
}
