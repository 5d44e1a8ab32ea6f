//! Pure helpers over claim values and audiences, shared by authentication (reading claims),
//! policy (templating and conditions) and configuration (can-never-match warnings), so each
//! has exactly one meaning.

use serde_json::Value;

/// Whether two audiences name the same API: equal, or URIs (`api://quay-api`,
/// `https://quay.example.com`) that differ only by one trailing slash, as Entra v1 App ID URIs
/// appear both ways. The one comparison used for a token's `aud` against an issuer's
/// `audiences`, for a rule's `when.audiences`, and for check-config's can-never-match warning.
pub fn audience_equal(a: &str, b: &str) -> bool {
    fn trimmed(uri: &str) -> &str {
        uri.strip_suffix('/').unwrap_or(uri)
    }
    a == b || (a.contains("://") && b.contains("://") && trimmed(a) == trimmed(b))
}

/// A claim's values: an array's items, or the value itself. The one reading of "a claim may be
/// one value or a list" for required claims, rule conditions and their compilation.
pub fn values(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        other => std::slice::from_ref(other),
    }
}

/// A JSON scalar as text (strings as they are, numbers and booleans printed); None otherwise.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// `text` cut to at most `max` characters (never inside one): for quoting a client-supplied
/// value in a log detail without letting it grow the line.
pub fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// A tenant id as Entra writes it in `iss` and `tid`: a UUID, 8-4-4-4-12 lower-case hex. The
/// one check for tenants in tokens and in the configuration (which lower-cases what an
/// operator wrote first): a looser check once let `tenants: any` take 36 dashes for a tenant.
pub fn is_tenant_id(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups.iter().zip(lengths).all(|(group, length)| {
            group.len() == length
                && group
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f'))
        })
}
