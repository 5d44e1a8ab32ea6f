//! `subject`, `username` and `email` templates of an `exchange` issuer: literal text with
//! `{claims.NAME}` placeholders (and `{claims.NAME|slug}` in `username`), compiled once from the
//! configuration and rendered per mint from the verified token's claims.
//!
//! A leaf (imports nothing of ours) so `config` can compile templates and `bridge` render them
//! without a cycle.
//!
//! Why the care: Quay keys its users by (login service, `sub`) and creates unknown ones
//! (QUAY-INTEGRATION.md §2), so a rendered `sub` must name one principal forever and no claim
//! value may make it name another. Values are therefore literals, never re-parsed, and a
//! subject is injective in its values: every character of a value outside `[A-Za-z0-9._~-]`
//! is percent-encoded (RFC 3986 §2.1, so `%` itself is too), and two placeholders are always
//! separated by a literal character a value cannot produce (`:` in `{claims.tid}:{claims.oid}`).
//! A rendering that cannot be done exactly (a missing or non-scalar claim, a username outside
//! Quay's grammar) fails; it never guesses.

use std::borrow::Cow;

use serde_json::Value;

/// What a template renders, which decides how values are inserted and what the result must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// The bridge token's `sub`: values percent-encoded, at most 255 characters (Quay's
    /// `FederatedLogin.service_ident` column).
    Subject,
    /// `preferred_username`: values as they are (or slugged), the result must fit [`valid_username`].
    Username,
    /// `email`: values as they are, the result must look like one address.
    Email,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Claim { name: String, slug: bool },
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    kind: TemplateKind,
    parts: Vec<Part>,
}

/// Why a rendering failed (reason `bridge_identity_invalid`). Never carries a claim's value:
/// the detail goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("claim {0} is missing")]
    Missing(String),
    #[error("claim {0} is not a non-empty string or integer")]
    NotScalar(String),
    #[error("the {kind} rendered from {template} is not {expected}")]
    Invalid {
        kind: &'static str,
        template: String,
        expected: &'static str,
    },
}

/// Characters a subject value keeps as they are: RFC 3986 unreserved. Everything else is
/// percent-encoded, so the literal separators between placeholders cannot come from a value.
fn subject_keeps(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')
}

impl Template {
    /// Compiles `source`. Errors are for the configuration (they name what is expected).
    pub fn parse(source: &str, kind: TemplateKind) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_string()));
                    rest = "";
                }
                Some(index) if rest[index..].starts_with('}') => {
                    return Err(format!("a `}}` without its `{{` in {source:?}"));
                }
                Some(index) => {
                    if index > 0 {
                        parts.push(Part::Literal(rest[..index].to_string()));
                    }
                    let after = &rest[index + 1..];
                    let Some(close) = after.find('}') else {
                        return Err(format!("a `{{` without its `}}` in {source:?}"));
                    };
                    let inner = after[..close].trim();
                    let (path, filter) = match inner.split_once('|') {
                        Some((path, filter)) => (path.trim(), Some(filter.trim())),
                        None => (inner, None),
                    };
                    let slug = match filter {
                        None => false,
                        Some("slug") if kind == TemplateKind::Username => true,
                        Some("slug") => {
                            return Err(format!(
                                "`|slug` is for `username` only: it maps several values to one, \
                                 and a {} must name one principal",
                                kind.name()
                            ));
                        }
                        Some(other) => {
                            return Err(format!("unknown filter `{other}` (known: slug)"));
                        }
                    };
                    let Some(name) = path.strip_prefix("claims.") else {
                        return Err(format!(
                            "placeholder {{{inner}}} in {source:?}: expected {{claims.NAME}}"
                        ));
                    };
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    {
                        return Err(format!("placeholder {{{inner}}}: not a claim name"));
                    }
                    parts.push(Part::Claim {
                        name: name.to_string(),
                        slug,
                    });
                    rest = &after[close + 1..];
                }
            }
        }
        if kind == TemplateKind::Subject {
            if !parts.iter().any(|part| matches!(part, Part::Claim { .. })) {
                return Err(
                    "a subject needs at least one {claims.…}: a fixed subject would make every \
                     caller one Quay user"
                        .into(),
                );
            }
            // Injectivity: between two placeholders a literal character that no encoded value
            // contains, so where one value ends is never in doubt.
            for window in parts.windows(3).chain(parts.windows(2)) {
                let separated = match window {
                    [Part::Claim { .. }, Part::Claim { .. }] => false,
                    [Part::Claim { .. }, Part::Literal(text), Part::Claim { .. }] => {
                        text.chars().any(|c| !subject_keeps(c) && c != '%')
                    }
                    _ => true,
                };
                if !separated {
                    return Err(format!(
                        "in {source:?} two placeholders must be separated by a character such \
                         as `:` or `/` (letters, digits, `.`, `_`, `~`, `-` and `%` can come from \
                         a value, so the subject would not name one principal)"
                    ));
                }
            }
        }
        Ok(Self {
            source: source.to_string(),
            kind,
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The literal text before the first placeholder: two issuers whose prefixes are not
    /// prefixes of one another can never render the same subject.
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(text)) => text,
            _ => "",
        }
    }

    /// The claims its placeholders read.
    pub fn claims_read(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Claim { name, .. } => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders from a verified token's claims, looked up by name with `claim`.
    pub fn render<'v>(
        &self,
        claim: impl Fn(&str) -> Option<&'v Value>,
    ) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Claim { name, slug } => {
                    let value = match claim(name) {
                        None | Some(Value::Null) => return Err(RenderError::Missing(name.clone())),
                        Some(Value::String(text)) if !text.is_empty() => {
                            Cow::Borrowed(text.as_str())
                        }
                        Some(Value::Number(number)) if number.is_u64() || number.is_i64() => {
                            Cow::Owned(number.to_string())
                        }
                        Some(_) => return Err(RenderError::NotScalar(name.clone())),
                    };
                    match (self.kind, slug) {
                        (TemplateKind::Subject, _) => percent_encode_into(&value, &mut out),
                        (_, true) => out.push_str(&slugify(&value)),
                        (_, false) => out.push_str(&value),
                    }
                }
            }
        }
        let (valid, expected) = match self.kind {
            TemplateKind::Subject => (
                out.len() <= 255,
                "at most 255 characters long (Quay's limit)",
            ),
            TemplateKind::Username => (
                valid_username(&out),
                "a Quay username (2–255 of a-z, 0-9, single `_` or `-` between them); \
                 `{claims.NAME|slug}` turns `acme/app` into `acme-app`",
            ),
            TemplateKind::Email => (valid_email(&out), "one email address"),
        };
        if valid {
            Ok(out)
        } else {
            Err(RenderError::Invalid {
                kind: self.kind.name(),
                template: self.source.clone(),
                expected,
            })
        }
    }
}

impl TemplateKind {
    fn name(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Username => "username",
            Self::Email => "email",
        }
    }
}

fn percent_encode_into(value: &str, out: &mut String) {
    for c in value.chars() {
        if subject_keeps(c) {
            out.push(c);
        } else {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
}

/// `Acme/My.App` → `acme-my-app`: lower case, every run of characters outside `[a-z0-9]`
/// becomes one `-`, none at either end. Several values share a slug, which is why it is for
/// usernames only (Quay tells users apart by `sub`; a taken name gets a number appended).
pub fn slugify(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut dash = false;
    for c in value.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    out
}

/// A username Quay keeps exactly as given: its `VALID_USERNAME_REGEX`
/// `^([a-z0-9]+(?:[._-][a-z0-9]+)*)$`, 2–255 long (`util/validation.py`), without `.`, which
/// Quay's `generate_valid_usernames` turns into `_` when it creates an SSO user, and without
/// `@`, where Quay cuts a preferred username.
pub fn valid_username(name: &str) -> bool {
    let bytes = name.as_bytes();
    (2..=255).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !bytes
            .windows(2)
            .any(|pair| !pair[0].is_ascii_alphanumeric() && !pair[1].is_ascii_alphanumeric())
}

fn valid_email(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    address.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.contains('@')
        && !address.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn render_with(template: &Template, value: Value) -> Result<String, RenderError> {
        let claims = claims(value);
        template.render(|name| claims.get(name))
    }

    fn subject(template: &str, value: Value) -> Result<String, RenderError> {
        render_with(
            &Template::parse(template, TemplateKind::Subject).unwrap(),
            value,
        )
    }

    #[test]
    fn subjects_render_literals_and_keep_safe_values() {
        assert_eq!(
            subject(
                "gh:{claims.repository_owner_id}:{claims.repository_id}",
                json!({"repository_owner_id": 123, "repository_id": "456"})
            )
            .unwrap(),
            "gh:123:456"
        );
        assert_eq!(
            subject(
                "{claims.tid}:{claims.oid}",
                json!({"tid": "72f988bf-86f1", "oid": "a.b_c~d"})
            )
            .unwrap(),
            "72f988bf-86f1:a.b_c~d"
        );
    }

    /// Hostile claim values never make two different callers one principal: a value carrying
    /// the separator, a percent sign or a placeholder-looking text is encoded, so the pairs that
    /// would collide as plain text render differently.
    #[test]
    fn hostile_values_never_name_another_principal() {
        let t = "{claims.tid}:{claims.oid}";
        let a = subject(t, json!({"tid": "a:b", "oid": "c"})).unwrap();
        let b = subject(t, json!({"tid": "a", "oid": "b:c"})).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, "a%3Ab:c");
        // Someone who controls `oid` cannot spell another's encoded value either.
        let c = subject(t, json!({"tid": "a", "oid": "b%3Ac"})).unwrap();
        assert_ne!(c, a);
        assert_ne!(c, b);
        // A value that looks like a placeholder is a literal, never substituted again.
        let d = subject(t, json!({"tid": "{claims.oid}", "oid": "x"})).unwrap();
        assert_eq!(d, "%7Bclaims.oid%7D:x");
        // Unicode, controls and slashes are encoded byte by byte.
        assert_eq!(
            subject("u/{claims.sub}", json!({"sub": "é\n/"})).unwrap(),
            "u/%C3%A9%0A%2F"
        );
    }

    #[test]
    fn missing_or_non_scalar_claims_refuse_the_rendering() {
        let t = "{claims.tid}:{claims.oid}";
        assert_eq!(
            subject(t, json!({"tid": "a"})),
            Err(RenderError::Missing("oid".into()))
        );
        for bad in [
            json!(["x"]),
            json!({"x": 1}),
            json!(true),
            json!(1.5),
            json!(""),
        ] {
            assert_eq!(
                subject(t, json!({"tid": "a", "oid": bad})),
                Err(RenderError::NotScalar("oid".into()))
            );
        }
        assert!(subject("{claims.sub}", json!({"sub": "x".repeat(300)})).is_err());
    }

    #[test]
    fn subject_templates_that_could_collide_are_refused() {
        for bad in [
            "{claims.a}{claims.b}",
            "{claims.a}-{claims.b}",
            "{claims.a}x%{claims.b}",
            "fixed",
            "{claims.a|slug}",
            "{sub}",
            "{claims.a",
            "a}b",
            "{claims.a|upper}",
        ] {
            assert!(
                Template::parse(bad, TemplateKind::Subject).is_err(),
                "{bad}"
            );
        }
        assert!(Template::parse("x-{claims.a}--:--{claims.b}", TemplateKind::Subject).is_ok());
    }

    #[test]
    fn usernames_must_fit_quays_grammar_and_slug_makes_them_fit() {
        let render = |template: &str, value: Value| {
            render_with(
                &Template::parse(template, TemplateKind::Username).unwrap(),
                value,
            )
        };
        assert_eq!(
            render(
                "gh-{claims.repository|slug}",
                json!({"repository": "Acme/My.App"})
            )
            .unwrap(),
            "gh-acme-my-app"
        );
        for hostile in ["acme/app", "Admin", "a@b", "a..b", "-a", "a", "x y", "a.b"] {
            assert!(
                render("{claims.r}", json!({"r": hostile})).is_err(),
                "{hostile} is no Quay username"
            );
        }
        assert!(render("{claims.r|slug}", json!({"r": "///"})).is_err());
        assert_eq!(
            render("{claims.r}", json!({"r": "ok_name-1"})).unwrap(),
            "ok_name-1"
        );
    }

    #[test]
    fn emails_must_be_one_address() {
        let t = Template::parse("{claims.email}", TemplateKind::Email).unwrap();
        assert!(render_with(&t, json!({"email": "a@example.com"})).is_ok());
        for bad in ["a", "a@b@example.com", "a @example.com", "@example.com"] {
            assert!(render_with(&t, json!({"email": bad})).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Injectivity, for any claim values (separators, `%`, braces, Unicode included): two
        /// callers get the same subject only if they have the same values.
        #[test]
        fn equal_subjects_mean_equal_values(
            a in "[a-z0-9:%{}/._~ -]{1,8}|\\PC{1,4}",
            b in "[a-z0-9:%{}/._~ -]{1,8}|\\PC{1,4}",
            c in "[a-z0-9:%{}/._~ -]{1,8}|\\PC{1,4}",
            d in "[a-z0-9:%{}/._~ -]{1,8}|\\PC{1,4}",
        ) {
            let t = "x{claims.p}:{claims.q}";
            let first = subject(t, json!({"p": a, "q": b})).unwrap();
            let second = subject(t, json!({"p": c, "q": d})).unwrap();
            proptest::prop_assert_eq!(first == second, a == c && b == d);
        }
    }
}
