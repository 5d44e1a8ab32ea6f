//! Policy: rules that turn a verified identity into grants, and the check that grants cover
//! what a request requires.
//!
//! Usage: `compile_rules` once at configuration load; per request `evaluate(&rules, &identity)`
//! gives the grants (with the rule that gave each), then `authorize(&grants, &required)`.
//!
//! Rules are evaluated in order and their grants add up; with no grant, the default is deny.
//! A value substituted into a grant template (`{claims.repository}`, a group-pattern capture) is
//! always a literal: it must fit the Quay name grammar of its position, so a claim holding `*`,
//! `,`, `:` or a space can never widen a grant; such a grant is dropped and the reason kept.

use std::collections::BTreeMap;

use regex::Regex;

use crate::config::raw;
use crate::model::claims::{audience_equal, scalar_text, truncate, values};
use crate::model::identity::Identity;
use crate::model::permission::{Grant, Granted, Permission, QuayScope, is_repository_path};

// === Compiled rules ===

#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    /// Issuer names this rule applies to; empty means every issuer.
    pub issuers: Vec<String>,
    pub when: Conditions,
    pub grants: Vec<GrantTemplate>,
    pub from_groups: Option<GroupGrants>,
}

#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub groups_any: Vec<String>,
    pub groups_all: Vec<String>,
    pub claims: Vec<(String, Vec<ValueMatcher>)>,
    pub audiences: Vec<String>,
    /// Tenant ids (lowercase) the rule trusts; empty: no tenant condition.
    pub tenants: Vec<String>,
    /// The rule says `tenants: any`: it knowingly trusts every tenant of a multi-tenant issuer
    /// (not a condition: it narrows nothing).
    pub any_tenant: bool,
    pub clients: Vec<String>,
}

/// Matches one claim value: exactly, or by a glob where `*` stands for any run of characters.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueMatcher {
    Exact(String),
    Glob(String),
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == value,
            Self::Glob(pattern) => glob_matches(pattern, value),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GroupGrants {
    pub pattern: Regex,
    pub grants: Vec<GrantTemplate>,
}

/// Where a placeholder stands, which decides the grammar its value must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Part of a scope or registry action (`repo:{role}`): lowercase letters only.
    Scope,
    /// Part of a namespace or repository path: Quay name segments, no wildcards.
    Resource,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Claim { name: String, position: Position },
    Capture { name: String, position: Position },
}

/// A grant as written in a rule, possibly with placeholders.
#[derive(Debug, Clone)]
pub struct GrantTemplate {
    pub text: String,
    pieces: Vec<Piece>,
    /// Pre-parsed grants when the template has no placeholder (the common case).
    fixed: Option<Vec<Grant>>,
}

impl GrantTemplate {
    /// The claims its `{claims.NAME}` placeholders read.
    pub fn claims_read(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|piece| match piece {
            Piece::Claim { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }
}

impl CompiledRule {
    /// Every claim this rule can read: `when.claims` and its grants' placeholders
    /// (`IssuerConfig::claims_read` keeps these in the identity, issue 14 item 2).
    pub fn claims_read(&self) -> impl Iterator<Item = &str> {
        let from_groups = self.from_groups.iter().flat_map(|g| g.grants.iter());
        self.when
            .claims
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(
                self.grants
                    .iter()
                    .chain(from_groups)
                    .flat_map(GrantTemplate::claims_read),
            )
    }
}

/// Grants the policy gave one identity, each with the rule that gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyOutcome {
    pub grants: Vec<(Grant, String)>,
    pub matched_rules: Vec<String>,
    /// Grants a rule would have given but were dropped, with why (for logs and `explain`).
    pub dropped: Vec<String>,
    /// The grants alone, with the `scopes` header they render to, made once with the outcome:
    /// the verified-token cache shares one outcome between Checks (issue 14 item 2), so an
    /// allowed Check copies no grant and joins no string.
    granted: Granted,
}

impl PolicyOutcome {
    pub fn new(
        grants: Vec<(Grant, String)>,
        matched_rules: Vec<String>,
        dropped: Vec<String>,
    ) -> Self {
        let granted = Granted::new(grants.iter().map(|(grant, _)| grant.clone()).collect());
        Self {
            grants,
            matched_rules,
            dropped,
            granted,
        }
    }

    /// The grants without their rules, and the `scopes` header they render to.
    pub fn granted(&self) -> &Granted {
        &self.granted
    }

    /// Whether the grants cover every required permission; the first one missing otherwise.
    pub fn authorize<'a>(&self, required: &'a [Permission]) -> Result<Vec<&str>, &'a Permission> {
        let mut granting_rules: Vec<&str> = Vec::new();
        for permission in required {
            let Some((_, rule)) = self
                .grants
                .iter()
                .find(|(grant, _)| grant.satisfies(permission))
            else {
                return Err(permission);
            };
            if !granting_rules.contains(&rule.as_str()) {
                granting_rules.push(rule);
            }
        }
        Ok(granting_rules)
    }
}

// === Compilation ===

/// Compiles rules; returns the rules and warnings, or every `(field, message)` wrong.
#[allow(clippy::type_complexity)]
pub fn compile_rules(
    raw_rules: &[raw::Rule],
    issuer_names: &[&str],
) -> Result<(Vec<CompiledRule>, Vec<String>), Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut rules = Vec::new();
    for (index, raw_rule) in raw_rules.iter().enumerate() {
        let field = format!("rules[{index}]");
        let before = errors.len();
        if raw_rule.name.trim().is_empty() {
            errors.push((format!("{field}.name"), "must not be empty".into()));
        }
        if raw_rules[..index]
            .iter()
            .any(|other| other.name == raw_rule.name)
        {
            errors.push((
                format!("{field}.name"),
                format!("rule name {:?} is used twice", raw_rule.name),
            ));
        }
        for issuer in &raw_rule.issuers {
            if !issuer_names.contains(&issuer.as_str()) {
                errors.push((
                    format!("{field}.issuers"),
                    format!(
                        "no issuer is named {issuer:?} (configured: {})",
                        issuer_names.join(", ")
                    ),
                ));
            }
        }
        if raw_rule.grant.is_empty() && raw_rule.grant_from_groups.is_none() {
            errors.push((
                field.clone(),
                "a rule must have grant or grant_from_groups".into(),
            ));
        }
        let when = compile_conditions(&raw_rule.when, &field, &mut errors);
        let grants =
            compile_templates(&raw_rule.grant, &[], &format!("{field}.grant"), &mut errors);
        let from_groups = raw_rule.grant_from_groups.as_ref().and_then(|group_grant| {
            let field = format!("{field}.grant_from_groups");
            // Anchor the pattern: a group pattern that matches part of a group name is a trap.
            match Regex::new(&format!("^(?:{})$", group_grant.pattern)) {
                Ok(pattern) => {
                    let captures: Vec<String> = pattern
                        .capture_names()
                        .flatten()
                        .map(str::to_string)
                        .collect();
                    let grants = compile_templates(
                        &group_grant.grant,
                        &captures,
                        &format!("{field}.grant"),
                        &mut errors,
                    );
                    if group_grant.grant.is_empty() {
                        errors.push((
                            format!("{field}.grant"),
                            "must list at least one grant".into(),
                        ));
                    }
                    Some(GroupGrants { pattern, grants })
                }
                Err(error) => {
                    errors.push((
                        format!("{field}.pattern"),
                        format!("invalid regex: {error}"),
                    ));
                    None
                }
            }
        });
        if errors.len() > before {
            continue;
        }
        warnings.extend(shadowed_grants(&raw_rule.name, &grants));
        // super:user is every right in Quay: a rule giving it to every valid token of an
        // issuer hands the installation to whoever can get a token for that audience (any
        // GitHub repository, any tenant of a multi-tenant app).
        let grants_super_user = grants
            .iter()
            .filter_map(|template| template.fixed.as_ref())
            .flatten()
            .any(|grant| grant.scope == QuayScope::SuperUser);
        if grants_super_user && is_unconditional(&when) {
            let whose = if raw_rule.issuers.is_empty() {
                "every issuer".to_string()
            } else {
                format!("issuer {}", raw_rule.issuers.join(", "))
            };
            errors.push((
                format!("{field}.grant"),
                format!(
                    "rule {:?} grants super:user to every valid token of {whose}: add a when \
                     condition that names who may have it (groups_any, groups_all, claims, \
                     clients, tenants)",
                    raw_rule.name
                ),
            ));
            continue;
        }
        rules.push(CompiledRule {
            name: raw_rule.name.clone(),
            issuers: raw_rule.issuers.clone(),
            when,
            grants,
            from_groups,
        });
    }
    if errors.is_empty() {
        Ok((rules, warnings))
    } else {
        Err(errors)
    }
}

/// Fixed grants of one rule that another of its grants already covers (`repo:read on acme/app`
/// beside `repo:write on acme/*`): harmless, but usually a sign the rule says less than meant.
fn shadowed_grants(rule: &str, templates: &[GrantTemplate]) -> Vec<String> {
    let fixed: Vec<(&GrantTemplate, &Grant)> = templates
        .iter()
        .filter_map(|t| t.fixed.as_ref().map(|grants| (t, grants)))
        .flat_map(|(t, grants)| grants.iter().map(move |g| (t, g)))
        .collect();
    let mut warnings = Vec::new();
    for (index, (template, grant)) in fixed.iter().enumerate() {
        let covering = fixed
            .iter()
            .enumerate()
            .find(|(other_index, (other_template, other))| {
                *other_index != index
                    && other_template.text != template.text
                    && other != grant
                    && other.covers(grant)
            });
        if let Some((_, (other_template, _))) = covering {
            warnings.push(format!(
                "rule {rule:?}: grant {:?} is already covered by {:?}",
                template.text, other_template.text
            ));
        }
    }
    warnings.dedup();
    warnings
}

fn is_unconditional(when: &Conditions) -> bool {
    when.groups_any.is_empty()
        && when.groups_all.is_empty()
        && when.claims.is_empty()
        && when.audiences.is_empty()
        && when.tenants.is_empty()
        && when.clients.is_empty()
}

/// The tenants a rule's `when.tenants` names: a list of ids, or `any` (`any_tenant`).
fn compile_tenants(
    raw: Option<&raw::Tenants>,
    field: &str,
    errors: &mut Vec<(String, String)>,
) -> (Vec<String>, bool) {
    match raw {
        None => (Vec::new(), false),
        Some(raw::Tenants::Keyword(word)) if word == "any" => (Vec::new(), true),
        Some(raw::Tenants::Keyword(word)) => {
            errors.push((
                format!("{field}.when.tenants"),
                format!("expected a list of tenant ids or the word any, got {word:?}"),
            ));
            (Vec::new(), false)
        }
        Some(raw::Tenants::List(list)) if list.is_empty() => {
            errors.push((
                format!("{field}.when.tenants"),
                "an empty list can never match: name tenant ids, or write tenants: any".into(),
            ));
            (Vec::new(), false)
        }
        Some(raw::Tenants::List(list)) => {
            let tenants: Vec<String> = list.iter().map(|t| t.to_ascii_lowercase()).collect();
            for tenant in tenants
                .iter()
                .filter(|t| !crate::model::claims::is_tenant_id(t))
            {
                errors.push((
                    format!("{field}.when.tenants"),
                    format!(
                        "{tenant:?} is not a tenant id (a GUID such as \
                         11111111-2222-3333-4444-555555555555)"
                    ),
                ));
            }
            (tenants, false)
        }
    }
}

fn compile_conditions(
    raw: &raw::When,
    field: &str,
    errors: &mut Vec<(String, String)>,
) -> Conditions {
    let mut claims = Vec::new();
    for (name, expected) in &raw.claims {
        let mut matchers = Vec::new();
        for value in values(expected) {
            match scalar_text(value) {
                Some(text) if text.contains('*') => matchers.push(ValueMatcher::Glob(text)),
                Some(text) => matchers.push(ValueMatcher::Exact(text)),
                None => errors.push((
                    format!("{field}.when.claims.{name}"),
                    "expected a string, number, boolean or a list of them".into(),
                )),
            }
        }
        if matchers.is_empty() {
            errors.push((
                format!("{field}.when.claims.{name}"),
                "an empty list can never match".into(),
            ));
        }
        claims.push((name.clone(), matchers));
    }
    let (tenants, any_tenant) = compile_tenants(raw.tenants.as_ref(), field, errors);
    Conditions {
        groups_any: raw.groups_any.clone(),
        groups_all: raw.groups_all.clone(),
        claims,
        audiences: raw.audiences.clone(),
        tenants,
        any_tenant,
        clients: raw.clients.clone(),
    }
}

fn compile_templates(
    texts: &[String],
    captures: &[String],
    field: &str,
    errors: &mut Vec<(String, String)>,
) -> Vec<GrantTemplate> {
    texts
        .iter()
        .filter_map(|text| match compile_template(text, captures) {
            Ok(template) => Some(template),
            Err(message) => {
                errors.push((field.to_string(), format!("{text:?}: {message}")));
                None
            }
        })
        .collect()
}

fn compile_template(text: &str, captures: &[String]) -> Result<GrantTemplate, String> {
    // The boundary between scope and resource: placeholders after it name resources.
    let scope_end = if text.trim_start().starts_with("repository:") {
        // repository:{resource}:{actions}: the actions follow the last ':'.
        text.rfind(':').unwrap_or(text.len())
    } else {
        text.find(" on ").unwrap_or(text.len())
    };
    let in_docker_form = text.trim_start().starts_with("repository:");
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|index| open + index)
            .ok_or_else(|| "unclosed '{' in template".to_string())?;
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_string()));
        }
        let at = offset + open;
        let position = match (in_docker_form, at > scope_end) {
            (true, true) | (false, false) => Position::Scope,
            _ => Position::Resource,
        };
        let name = &rest[open + 1..close];
        if let Some(claim) = name.strip_prefix("claims.") {
            if claim.is_empty() {
                return Err("{claims.} names no claim".into());
            }
            pieces.push(Piece::Claim {
                name: claim.to_string(),
                position,
            });
        } else if captures.iter().any(|capture| capture == name) {
            pieces.push(Piece::Capture {
                name: name.to_string(),
                position,
            });
        } else if captures.is_empty() {
            return Err(format!(
                "unknown placeholder {{{name}}}: use {{claims.NAME}}, or named captures inside grant_from_groups"
            ));
        } else {
            return Err(format!(
                "unknown placeholder {{{name}}}: the pattern's named captures are {}",
                captures.join(", ")
            ));
        }
        offset += close + 1;
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    let has_placeholders = pieces
        .iter()
        .any(|piece| !matches!(piece, Piece::Literal(_)));
    // Check the shape with sample values so a typo fails at load, not per request. A
    // resource placeholder may stand for one name or a path, so either shape will do.
    let try_sample = |resource: &str| {
        render(&pieces, |_, position| {
            Some(match position {
                Position::Scope => "read".to_string(),
                Position::Resource => resource.to_string(),
            })
        })
        .map(|sample| Grant::parse(&sample).map_err(|error| error.0))
        .unwrap_or_else(|| Err("cannot render".into()))
    };
    let parsed =
        try_sample("sample").or_else(|first| try_sample("sample/sample").map_err(|_| first))?;
    Ok(GrantTemplate {
        text: text.to_string(),
        fixed: (!has_placeholders).then_some(parsed),
        pieces,
    })
}

/// Fills placeholders; `value` returns None when the source is missing.
fn render(
    pieces: &[Piece],
    mut value: impl FnMut(&Piece, Position) -> Option<String>,
) -> Option<String> {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(literal) => text.push_str(literal),
            Piece::Claim { position, .. } | Piece::Capture { position, .. } => {
                text.push_str(&value(piece, *position)?)
            }
        }
    }
    Some(text)
}

/// Whether a substituted value may stand at `position`. Values are lowercased first (Quay's
/// names are lowercase; GitHub's `Acme/App` is Quay's `acme/app`).
fn fits(value: &str, position: Position) -> bool {
    match position {
        Position::Scope => !value.is_empty() && value.chars().all(|c| c.is_ascii_lowercase()),
        Position::Resource => is_repository_path(value),
    }
}

// === Evaluation ===

/// Runs every rule against the identity, in order.
pub fn evaluate(rules: &[CompiledRule], identity: &Identity) -> PolicyOutcome {
    let mut outcome = PolicyOutcome::default();
    for rule in rules {
        if !rule.issuers.is_empty() && !rule.issuers.iter().any(|name| **name == *identity.issuer) {
            continue;
        }
        if !conditions_hold(&rule.when, identity) {
            continue;
        }
        let before = outcome.grants.len();
        let no_captures = BTreeMap::new();
        for template in &rule.grants {
            expand(template, identity, &no_captures, &rule.name, &mut outcome);
        }
        if let Some(group_grants) = &rule.from_groups {
            for group in identity.groups.iter() {
                let Some(found) = group_grants.pattern.captures(group) else {
                    continue;
                };
                let captures: BTreeMap<&str, &str> = group_grants
                    .pattern
                    .capture_names()
                    .flatten()
                    .filter_map(|name| Some((name, found.name(name)?.as_str())))
                    .collect();
                for template in &group_grants.grants {
                    expand(template, identity, &captures, &rule.name, &mut outcome);
                }
            }
        }
        if outcome.grants.len() > before {
            outcome.matched_rules.push(rule.name.clone());
        }
    }
    PolicyOutcome::new(outcome.grants, outcome.matched_rules, outcome.dropped)
}

fn expand(
    template: &GrantTemplate,
    identity: &Identity,
    captures: &BTreeMap<&str, &str>,
    rule: &str,
    outcome: &mut PolicyOutcome,
) {
    if let Some(fixed) = &template.fixed {
        for grant in fixed {
            push_grant(outcome, grant.clone(), rule);
        }
        return;
    }
    let mut problem = None;
    let rendered = render(&template.pieces, |piece, position| {
        let (source, raw_value) = match piece {
            Piece::Claim { name, .. } => (
                format!("claims.{name}"),
                identity.claims.get(name).and_then(scalar_text),
            ),
            Piece::Capture { name, .. } => (
                name.clone(),
                captures.get(name.as_str()).map(|v| v.to_string()),
            ),
            Piece::Literal(_) => return None,
        };
        let Some(raw_value) = raw_value else {
            problem = Some(format!("{{{source}}} is missing or not a single value"));
            return None;
        };
        let value = raw_value.to_ascii_lowercase();
        if !fits(&value, position) {
            problem = Some(format!(
                "{{{source}}} = {:?} does not fit the Quay name grammar there",
                truncate(&raw_value, 80)
            ));
            return None;
        }
        Some(value)
    });
    let parsed = rendered
        .as_deref()
        .map(|text| Grant::parse(text).map_err(|error| error.0));
    match (parsed, problem) {
        (Some(Ok(grants)), None) => {
            for grant in grants {
                push_grant(outcome, grant, rule);
            }
        }
        (Some(Err(error)), _) => outcome.dropped.push(format!(
            "rule {rule:?}: grant {:?} dropped: {error}",
            template.text
        )),
        (None, Some(problem)) | (Some(Ok(_)), Some(problem)) => outcome.dropped.push(format!(
            "rule {rule:?}: grant {:?} dropped: {problem}",
            template.text
        )),
        (None, None) => {}
    }
}

fn push_grant(outcome: &mut PolicyOutcome, grant: Grant, rule: &str) {
    if !outcome
        .grants
        .iter()
        .any(|(existing, _)| existing == &grant)
    {
        outcome.grants.push((grant, rule.to_string()));
    }
}

fn conditions_hold(when: &Conditions, identity: &Identity) -> bool {
    let has_group = |group: &String| identity.groups.iter().any(|have| **have == **group);
    if !when.groups_any.is_empty() && !when.groups_any.iter().any(has_group) {
        return false;
    }
    if !when.groups_all.iter().all(has_group) {
        return false;
    }
    if !when.audiences.is_empty()
        && !identity.audiences.iter().any(|aud| {
            when.audiences
                .iter()
                .any(|wanted| audience_equal(wanted, aud))
        })
    {
        return false;
    }
    if !when.tenants.is_empty()
        && !identity
            .tenant
            .as_ref()
            .is_some_and(|tenant| when.tenants.iter().any(|t| **t == **tenant))
    {
        return false;
    }
    if !when.clients.is_empty()
        && !identity
            .client
            .as_ref()
            .is_some_and(|client| when.clients.iter().any(|c| **c == **client))
    {
        return false;
    }
    when.claims.iter().all(|(name, matchers)| {
        let Some(value) = identity.claims.get(name) else {
            return false;
        };
        values(value)
            .iter()
            .filter_map(scalar_text)
            .any(|value| matchers.iter().any(|matcher| matcher.matches(&value)))
    })
}

/// `*` matches any run of characters (including none and `/`); everything else is literal.
pub fn glob_matches(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == value;
    }
    if !value.starts_with(first) || value.len() < first.len() + last.len() || !value.ends_with(last)
    {
        return false;
    }
    let mut middle = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part) {
            Some(index) => middle = &middle[index + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn rules(yaml: &str) -> Vec<CompiledRule> {
        let raw_rules: Vec<raw::Rule> = serde_yaml::from_str(yaml).expect("yaml");
        compile_rules(&raw_rules, &["entra", "github"])
            .expect("rules")
            .0
    }

    fn rule_errors(yaml: &str) -> Vec<(String, String)> {
        let raw_rules: Vec<raw::Rule> = serde_yaml::from_str(yaml).expect("yaml");
        compile_rules(&raw_rules, &["entra", "github"]).expect_err("should fail")
    }

    use crate::model::identity::Claims;
    use std::sync::Arc;

    pub(crate) fn identity(issuer: &str, groups: &[&str], claims: Value) -> Identity {
        Identity {
            issuer: issuer.into(),
            iss: "https://issuer.example".into(),
            username: "alice".into(),
            tenant: Some("11111111-2222-3333-4444-555555555555".into()),
            client: Some("client-1".into()),
            audiences: Arc::from([Arc::from("api://quay-api")]),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            claims: Claims::all(claims.as_object().cloned().unwrap_or_default()),
            expires_at: u64::MAX,
            bridge_subject: None,
            exchanged: None,
        }
    }

    const DESIGN_RULES: &str = r#"
- name: platform-admins
  issuers: [entra]
  when: {groups_any: [Quay.Admin]}
  grant: ["super:user"]
- name: team-roles
  issuers: [entra]
  grant_from_groups:
    pattern: '^Quay\.(?P<ns>[a-z0-9_]+)\.(?P<role>read|write|admin)$'
    grant: ["repo:{role} on {ns}/*"]
- name: ci-push
  issuers: [github]
  when: {claims: {repository_owner: acme, ref: refs/heads/main}}
  grant: ["repository:{claims.repository}:pull,push"]
"#;

    fn can(outcome: &PolicyOutcome, permission: Permission) -> bool {
        outcome.authorize(&[permission]).is_ok()
    }

    #[test]
    fn design_rules_grant_what_they_say() {
        let rules = rules(DESIGN_RULES);
        let admin = evaluate(&rules, &identity("entra", &["Quay.Admin"], Value::Null));
        assert_eq!(admin.matched_rules, ["platform-admins"]);
        assert!(can(&admin, Permission::global(QuayScope::SuperUser)));

        let writer = evaluate(
            &rules,
            &identity("entra", &["Quay.acme.write", "Other"], Value::Null),
        );
        assert_eq!(writer.matched_rules, ["team-roles"]);
        assert!(can(
            &writer,
            Permission::repository(QuayScope::RepoWrite, "acme", "app")
        ));
        assert!(!can(
            &writer,
            Permission::repository(QuayScope::RepoAdmin, "acme", "app")
        ));
        assert!(!can(
            &writer,
            Permission::repository(QuayScope::RepoRead, "other", "app")
        ));

        let ci = identity(
            "github",
            &[],
            serde_json::json!({"repository_owner": "acme", "ref": "refs/heads/main", "repository": "acme/app"}),
        );
        let outcome = evaluate(&rules, &ci);
        assert!(can(
            &outcome,
            Permission::repository(QuayScope::RepoWrite, "acme", "app")
        ));
        assert!(!can(
            &outcome,
            Permission::repository(QuayScope::RepoWrite, "acme", "other")
        ));

        let branch = identity(
            "github",
            &[],
            serde_json::json!({"repository_owner": "acme", "ref": "refs/heads/dev", "repository": "acme/app"}),
        );
        assert!(evaluate(&rules, &branch).grants.is_empty());
        // Rules are scoped to their issuers: the same group from another issuer gives nothing.
        assert!(
            evaluate(&rules, &identity("github", &["Quay.Admin"], Value::Null))
                .grants
                .is_empty()
        );
    }

    #[test]
    fn hostile_claim_values_never_widen_grants() {
        let rules = rules(DESIGN_RULES);
        for hostile in [
            "acme/*",
            "*/*",
            "acme/app:pull,push",
            "acme/app,other/x",
            "acme/../x",
            "acme/app x",
            "",
            "acme//app",
            "acme/app/",
        ] {
            let ci = identity(
                "github",
                &[],
                serde_json::json!({"repository_owner": "acme", "ref": "refs/heads/main", "repository": hostile}),
            );
            let outcome = evaluate(&rules, &ci);
            assert!(
                outcome.grants.is_empty(),
                "{hostile:?} gave {:?}",
                outcome.grants
            );
            assert_eq!(outcome.dropped.len(), 1, "{hostile:?}");
        }
    }

    #[test]
    fn claim_values_are_lowercased_to_quay_names() {
        let rules = rules(DESIGN_RULES);
        let ci = identity(
            "github",
            &[],
            serde_json::json!({"repository_owner": "acme", "ref": "refs/heads/main", "repository": "Acme/App"}),
        );
        assert!(can(
            &evaluate(&rules, &ci),
            Permission::repository(QuayScope::RepoWrite, "acme", "app")
        ));
    }

    #[test]
    fn conditions_cover_every_kind() {
        let rules = rules(
            r#"
- name: all
  when:
    groups_all: [a, b]
    claims: {ref: "refs/heads/*", env: [prod, stage], run: 7}
    audiences: [api://quay-api]
    tenants: [11111111-2222-3333-4444-555555555555]
    clients: [client-1]
  grant: ["repo:read on acme/*"]
"#,
        );
        let claims = serde_json::json!({"ref": "refs/heads/main", "env": "stage", "run": 7});
        assert_eq!(
            evaluate(&rules, &identity("entra", &["a", "b"], claims.clone()))
                .grants
                .len(),
            1
        );
        assert!(
            evaluate(&rules, &identity("entra", &["a"], claims.clone()))
                .grants
                .is_empty()
        );
        let mut other_client = identity("entra", &["a", "b"], claims.clone());
        other_client.client = Some("client-2".into());
        assert!(evaluate(&rules, &other_client).grants.is_empty());
        let mut no_tenant = identity("entra", &["a", "b"], claims);
        no_tenant.tenant = None;
        assert!(evaluate(&rules, &no_tenant).grants.is_empty());
        let wrong_env = serde_json::json!({"ref": "refs/heads/main", "env": "dev", "run": 7});
        assert!(
            evaluate(&rules, &identity("entra", &["a", "b"], wrong_env))
                .grants
                .is_empty()
        );
    }

    #[test]
    fn audience_and_tenant_conditions() {
        let rules = rules(
            r#"
- name: obo
  when: {audiences: ["api://quay-api/"]}
  grant: ["repo:read on acme/*"]
- name: every-tenant
  when: {tenants: any, groups_any: [Quay.Reader]}
  grant: ["repo:read on public/*"]
"#,
        );
        // The token says api://quay-api, the rule api://quay-api/: the same App ID URI.
        let outcome = evaluate(&rules, &identity("entra", &["Quay.Reader"], Value::Null));
        assert_eq!(outcome.matched_rules, ["obo", "every-tenant"]);
        let mut other = identity("entra", &["Quay.Reader"], Value::Null);
        other.audiences = Arc::from([Arc::from("api://quay-api-2")]);
        other.tenant = Some("99999999-2222-3333-4444-555555555555".into());
        assert_eq!(evaluate(&rules, &other).matched_rules, ["every-tenant"]);
    }

    #[test]
    fn compile_errors_name_their_fields() {
        let errors = rule_errors(
            r#"
- name: r
  issuers: [nobody]
  grant: ["repo:read on {nope}/*", "repo:bogus on a/b"]
- name: r
  grant_from_groups: {pattern: "(", grant: ["super:user"]}
"#,
        );
        let text = format!("{errors:?}");
        assert!(text.contains("rules[0].issuers"), "{text}");
        assert!(text.contains("unknown placeholder {nope}"), "{text}");
        assert!(text.contains("unknown scope"), "{text}");
        assert!(text.contains("rule name \\\"r\\\" is used twice"), "{text}");
        assert!(
            text.contains("rules[1].grant_from_groups.pattern"),
            "{text}"
        );
    }

    #[test]
    fn authorize_needs_every_permission_and_names_the_missing_one() {
        let rules = rules("- name: r\n  grant: [\"repository:acme/app:pull\"]\n");
        let outcome = evaluate(&rules, &identity("entra", &[], Value::Null));
        let pull = Permission::repository(QuayScope::RepoRead, "acme", "app");
        let push = Permission::repository(QuayScope::RepoWrite, "acme", "app");
        assert_eq!(
            outcome.authorize(std::slice::from_ref(&pull)),
            Ok(vec!["r"])
        );
        assert_eq!(outcome.authorize(&[pull, push.clone()]), Err(&push));
        assert_eq!(outcome.authorize(&[]), Ok(vec![]));
    }

    #[test]
    fn glob_matching() {
        assert!(glob_matches("refs/heads/*", "refs/heads/main"));
        assert!(glob_matches("refs/heads/*", "refs/heads/a/b"));
        assert!(!glob_matches("refs/heads/*", "refs/tags/v1"));
        assert!(glob_matches("*-prod", "app-prod"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxc"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("ab*ba", "aba"));
    }
}
