//! The configuration's JSON Schema, and `QUAY_AUTHZ_…` environment overrides derived from it.
//!
//! Usage: `schema()` is the JSON Schema of the YAML (from the raw serde types, so it cannot
//! drift from what the parser accepts); `settings()` lists every scalar setting outside the
//! `issuers:` and `rules:` lists with its variable (`jwks.fetch_timeout_seconds` →
//! `QUAY_AUTHZ_JWKS_FETCH_TIMEOUT_SECONDS`); `apply(&mut yaml, vars)` writes the variables'
//! values into the parsed YAML before the typed build, so they are validated like the file.
//!
//! An unknown `QUAY_AUTHZ_` variable is a warning, not an error: Kubernetes injects
//! `QUAY_AUTHZ_SERVICE_HOST`, `QUAY_AUTHZ_PORT_9191_TCP`, … into every pod of a namespace that
//! has a Service named `quay-authz` (service links), and refusing to start over those would
//! take a deployment down for a variable nobody set. Those service-link names are ignored
//! silently; any other unknown name is reported by `check-config` and logged at start.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::config::{ConfigIssue, raw};

/// Every override's name starts with this.
pub const PREFIX: &str = "QUAY_AUTHZ_";

/// Variables with this prefix that are not settings: the binary's own flags, and the build's.
pub const RESERVED: [&str; 4] = [
    "QUAY_AUTHZ_CONFIG",
    "QUAY_AUTHZ_LOG",
    "QUAY_AUTHZ_LOG_FORMAT",
    "QUAY_AUTHZ_GIT_REVISION",
];

/// Prefixes of the variables Kubernetes defines for a Service named `quay-authz`.
const SERVICE_LINK_PREFIXES: [&str; 2] = ["QUAY_AUTHZ_SERVICE_", "QUAY_AUTHZ_PORT"];

/// The JSON Schema (draft 2020-12) of the configuration file.
pub fn schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(raw::Document))
        .unwrap_or_else(|_| Value::Object(Map::new()));
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), "quay-authz configuration".into());
        object.insert(
            "description".into(),
            "Generated from the configuration types by `quay-authz config-schema`; see README.md"
                .into(),
        );
    }
    schema
}

/// The schema as shipped in `deploy/config.schema.json`: pretty JSON with a final newline.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// What a setting's value must look like.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    String,
    /// A whole number not below `minimum`.
    Integer {
        minimum: Option<i64>,
    },
    Number,
    Boolean,
    /// One of these words.
    OneOf(Vec<String>),
}

/// One scalar setting that an environment variable can override.
#[derive(Debug, Clone)]
pub struct Setting {
    /// Keys from the document's root, such as `["jwks", "max_keys"]`.
    pub path: Vec<String>,
    pub variable: String,
    pub kind: ValueKind,
    /// The default as JSON text (`5`, `"0.0.0.0:9191"`), when the schema knows one.
    pub default: Option<String>,
    /// The file must set it (unless this variable does).
    pub required: bool,
    pub description: String,
}

impl Setting {
    /// `jwks.max_keys`.
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// Every overridable setting, in schema order, derived once from `schema()`.
pub fn settings() -> &'static [Setting] {
    static SETTINGS: OnceLock<Vec<Setting>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let schema = schema();
        let mut found = Vec::new();
        collect(&schema, &schema, true, &mut Vec::new(), &mut found);
        found
    })
}

/// Walks the object properties below `node`; `required` says whether the file must hold `node`.
fn collect(
    root: &Value,
    node: &Value,
    required: bool,
    path: &mut Vec<String>,
    found: &mut Vec<Setting>,
) {
    let node = resolve(root, node);
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let listed = |name: &str| {
        node.get("required")
            .and_then(Value::as_array)
            .is_some_and(|names| names.iter().any(|n| n == name))
    };
    for (name, property) in properties {
        path.push(name.clone());
        let resolved = resolve(root, property);
        let required = required && listed(name);
        if resolved.get("properties").is_some() {
            collect(root, resolved, required, path, found);
        } else if let Some(kind) = scalar_kind(resolved) {
            found.push(Setting {
                variable: format!("{PREFIX}{}", path.join("_").to_ascii_uppercase()),
                path: path.clone(),
                kind,
                default: property.get("default").map(Value::to_string),
                required,
                description: description(property)
                    .or_else(|| description(resolved))
                    .unwrap_or_default(),
            });
        }
        path.pop();
    }
}

/// Follows a local `$ref` (`#/$defs/Jwks`), also through an optional section
/// (`anyOf: [{$ref}, {type: null}]`, what schemars makes of `Option<Section>`).
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(alternatives) = node.get("anyOf").and_then(Value::as_array) {
        let mut not_null = alternatives
            .iter()
            .filter(|alternative| alternative.get("type").and_then(Value::as_str) != Some("null"));
        if let (Some(only), None) = (not_null.next(), not_null.next())
            && only.get("$ref").is_some()
        {
            return resolve(root, only);
        }
    }
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix("#/")
            .and_then(|pointer| root.pointer(&format!("/{pointer}")))
            .unwrap_or(node),
        None => node,
    }
}

fn description(node: &Value) -> Option<String> {
    let text = node.get("description")?.as_str()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The kind of a scalar schema; `None` for lists, maps and unions of other shapes.
fn scalar_kind(node: &Value) -> Option<ValueKind> {
    if let Some(words) = string_words(node) {
        return Some(ValueKind::OneOf(words));
    }
    let types: Vec<&str> = match node.get("type")? {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let types: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    match types.as_slice() {
        ["string"] => Some(ValueKind::String),
        ["integer"] => Some(ValueKind::Integer {
            minimum: node.get("minimum").and_then(Value::as_i64),
        }),
        ["number"] => Some(ValueKind::Number),
        ["boolean"] => Some(ValueKind::Boolean),
        _ => None,
    }
}

/// `{"enum": [...]}` of strings, or `oneOf` string constants (enums whose variants carry docs).
fn string_words(node: &Value) -> Option<Vec<String>> {
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    let alternatives = node.get("oneOf").and_then(Value::as_array)?;
    let mut words = Vec::new();
    for alternative in alternatives {
        match string_words(alternative) {
            Some(more) => words.extend(more),
            None => words.push(alternative.get("const")?.as_str()?.to_string()),
        }
    }
    Some(words)
}

/// An override that took effect, for `check-config` and the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedOverride {
    pub variable: String,
    /// `jwks.max_keys`.
    pub field: String,
    /// The value as given in the environment, unless the setting may hold a secret.
    pub value: String,
}

/// What `apply` did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: Vec<AppliedOverride>,
    /// Unknown `QUAY_AUTHZ_` variables (by name only: a value could be anything).
    pub warnings: Vec<String>,
    /// Values that do not fit their setting; each names its variable.
    pub issues: Vec<ConfigIssue>,
}

/// The `QUAY_AUTHZ_` variables among `vars` that are not reserved or Kubernetes service links.
pub fn relevant<I>(vars: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut relevant: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with(PREFIX)
                && !RESERVED.contains(&name.as_str())
                && !SERVICE_LINK_PREFIXES
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    relevant.sort();
    relevant
}

/// The process environment as UTF-8 pairs; a `QUAY_AUTHZ_` variable whose value is not UTF-8
/// is kept with a replacement character, so it fails validation instead of vanishing.
pub fn process_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Writes each variable's value into `document` at its setting's path, creating sections the
/// file leaves out. `vars` should already be `relevant`.
pub fn apply(document: &mut serde_yaml::Value, vars: &[(String, String)]) -> Outcome {
    let mut outcome = Outcome::default();
    for (variable, text) in vars {
        let Some(setting) = settings().iter().find(|s| &s.variable == variable) else {
            outcome.warnings.push(format!(
                "environment variable {variable} is not a setting and is ignored (the README lists every QUAY_AUTHZ_ variable)"
            ));
            continue;
        };
        let issue = |message: String| ConfigIssue {
            line: None,
            field: format!("env {variable}"),
            message,
        };
        let value = match parse_value(&setting.kind, text) {
            Ok(value) => value,
            Err(message) => {
                outcome.issues.push(issue(message));
                continue;
            }
        };
        match set_path(document, &setting.path, value) {
            Ok(()) => outcome.applied.push(AppliedOverride {
                variable: variable.clone(),
                field: setting.dotted(),
                value: shown_value(setting, text),
            }),
            Err(message) => outcome.issues.push(issue(message)),
        }
    }
    outcome
}

/// Settings whose value may hold a secret (`http://user:password@proxy:3128`,
/// `redis://:password@redis:6379/0`).
const SECRET_SETTINGS: [&str; 2] = ["jwks.proxy", "bridge.store"];

/// The value as `check-config` and the start-up log may show it.
fn shown_value(setting: &Setting, text: &str) -> String {
    if SECRET_SETTINGS.contains(&setting.dotted().as_str()) {
        "<set, not shown: may hold credentials>".to_string()
    } else {
        text.to_string()
    }
}

/// The YAML value of `text` for a setting of `kind`, or what is wrong with it.
pub fn parse_value(kind: &ValueKind, text: &str) -> Result<serde_yaml::Value, String> {
    let trimmed = text.trim();
    match kind {
        ValueKind::String => Ok(serde_yaml::Value::String(text.to_string())),
        ValueKind::Integer { minimum } => {
            let expected = match minimum {
                Some(0) => "expected a non-negative integer".to_string(),
                Some(minimum) => format!("expected an integer of at least {minimum}"),
                None => "expected an integer".to_string(),
            };
            let number: i128 = trimmed
                .parse()
                .map_err(|_| format!("{expected}, got {text:?}"))?;
            if minimum.is_some_and(|minimum| number < i128::from(minimum)) {
                return Err(format!("{expected}, got {text:?}"));
            }
            if let Ok(unsigned) = u64::try_from(number) {
                Ok(serde_yaml::Value::Number(unsigned.into()))
            } else if let Ok(signed) = i64::try_from(number) {
                Ok(serde_yaml::Value::Number(signed.into()))
            } else {
                Err(format!("{expected} that fits in 64 bits, got {text:?}"))
            }
        }
        ValueKind::Number => match trimmed.parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(serde_yaml::Value::Number(number.into())),
            _ => Err(format!("expected a number, got {text:?}")),
        },
        ValueKind::Boolean => match trimmed {
            "true" => Ok(serde_yaml::Value::Bool(true)),
            "false" => Ok(serde_yaml::Value::Bool(false)),
            _ => Err(format!("expected true or false, got {text:?}")),
        },
        ValueKind::OneOf(words) => {
            if words.iter().any(|word| word == trimmed) {
                Ok(serde_yaml::Value::String(trimmed.to_string()))
            } else {
                Err(format!(
                    "expected one of {}, got {text:?}",
                    words.join(", ")
                ))
            }
        }
    }
}

fn set_path(
    document: &mut serde_yaml::Value,
    path: &[String],
    value: serde_yaml::Value,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty setting path".into());
    };
    let mut node = document;
    let mut walked = Vec::new();
    for key in parents {
        walked.push(key.as_str());
        node = section(node, key)
            .ok_or_else(|| format!("{} in the file is not a mapping", walked.join(".")))?;
    }
    if node.is_null() {
        *node = serde_yaml::Value::Mapping(Default::default());
    }
    let serde_yaml::Value::Mapping(mapping) = node else {
        return Err("the configuration file is not a mapping".into());
    };
    mapping.insert(serde_yaml::Value::String(last.clone()), value);
    Ok(())
}

/// The mapping under `key`, created when missing or empty (`jwks:` with nothing after it).
fn section<'a>(node: &'a mut serde_yaml::Value, key: &str) -> Option<&'a mut serde_yaml::Value> {
    if node.is_null() {
        *node = serde_yaml::Value::Mapping(Default::default());
    }
    let serde_yaml::Value::Mapping(mapping) = node else {
        return None;
    };
    let child = mapping
        .entry(serde_yaml::Value::String(key.to_string()))
        .or_insert(serde_yaml::Value::Null);
    if child.is_null() {
        *child = serde_yaml::Value::Mapping(Default::default());
    }
    child.is_mapping().then_some(child)
}

/// The README's table of variables (Markdown), generated so it cannot drift.
pub fn markdown_table() -> String {
    let mut table =
        String::from("| variable | setting | value | default |\n| --- | --- | --- | --- |\n");
    for setting in settings() {
        let value = match &setting.kind {
            ValueKind::String => "string".to_string(),
            ValueKind::Integer { minimum: Some(0) } => "integer ≥ 0".to_string(),
            ValueKind::Integer { .. } => "integer".to_string(),
            ValueKind::Number => "number".to_string(),
            ValueKind::Boolean => "`true` or `false`".to_string(),
            ValueKind::OneOf(words) => words
                .iter()
                .map(|word| format!("`{word}`"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let default = match &setting.default {
            Some(default) => format!("`{}`", default.trim_matches('"')),
            None if setting.required => "required".to_string(),
            None => String::new(),
        };
        table.push_str(&format!(
            "| `{}` | `{}` | {value} | {default} |\n",
            setting.variable,
            setting.dotted()
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables() -> Vec<&'static str> {
        settings().iter().map(|s| s.variable.as_str()).collect()
    }

    #[test]
    fn every_top_level_scalar_is_overridable_and_lists_are_not() {
        let names = variables();
        for expected in [
            "QUAY_AUTHZ_LISTEN_GRPC",
            "QUAY_AUTHZ_LISTEN_HTTP",
            "QUAY_AUTHZ_LISTEN_ADMIN",
            "QUAY_AUTHZ_QUAY_SERVICE",
            "QUAY_AUTHZ_QUAY_REALM",
            "QUAY_AUTHZ_UNAUTHENTICATED",
            "QUAY_AUTHZ_HEADERS_PREFIX",
            "QUAY_AUTHZ_HEADERS_REMOVE_AUTHORIZATION",
            "QUAY_AUTHZ_LIMITS_MAX_TOKEN_BYTES",
            "QUAY_AUTHZ_JWKS_FETCH_TIMEOUT_SECONDS",
            "QUAY_AUTHZ_JWKS_MAX_KEYS",
            "QUAY_AUTHZ_PATHS_NON_API",
            "QUAY_AUTHZ_AUDIT_ALLOW_SAMPLE_RATE",
            "QUAY_AUTHZ_SHUTDOWN_GRACE_SECONDS",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.starts_with("QUAY_AUTHZ_ISSUERS")));
        assert!(!names.iter().any(|n| n.starts_with("QUAY_AUTHZ_RULES")));
    }

    #[test]
    fn names_are_unique_and_clash_with_nothing_else() {
        let mut names = variables();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "two settings share a variable");
        for name in names {
            assert!(!RESERVED.contains(&name), "{name} is reserved");
            assert!(
                !SERVICE_LINK_PREFIXES.iter().any(|p| name.starts_with(p)),
                "{name} would be ignored as a Kubernetes service link"
            );
        }
    }

    #[test]
    fn kinds_and_defaults_come_from_the_types() {
        let find = |name: &str| {
            settings()
                .iter()
                .find(|s| s.variable == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let max_keys = find("QUAY_AUTHZ_JWKS_MAX_KEYS");
        assert_eq!(max_keys.kind, ValueKind::Integer { minimum: Some(0) });
        assert_eq!(max_keys.default.as_deref(), Some("100"));
        assert_eq!(
            find("QUAY_AUTHZ_UNAUTHENTICATED").kind,
            ValueKind::OneOf(vec!["deny".into(), "passthrough".into()])
        );
        assert_eq!(
            find("QUAY_AUTHZ_HEADERS_REMOVE_AUTHORIZATION").kind,
            ValueKind::Boolean
        );
        assert_eq!(
            find("QUAY_AUTHZ_AUDIT_ALLOW_SAMPLE_RATE").kind,
            ValueKind::Number
        );
        assert_eq!(find("QUAY_AUTHZ_QUAY_SERVICE").default, None);
        assert!(find("QUAY_AUTHZ_QUAY_SERVICE").required);
        assert!(!find("QUAY_AUTHZ_JWKS_MAX_KEYS").required);
        assert_eq!(
            find("QUAY_AUTHZ_UNAUTHENTICATED").default.as_deref(),
            Some("\"passthrough\"")
        );
        assert!(
            !find("QUAY_AUTHZ_JWKS_MIN_REFETCH_INTERVAL_SECONDS")
                .description
                .is_empty()
        );
    }

    #[test]
    fn values_are_typed_and_bad_ones_explained() {
        let integer = ValueKind::Integer { minimum: Some(0) };
        assert_eq!(
            parse_value(&integer, " 7 "),
            Ok(serde_yaml::Value::Number(7u64.into()))
        );
        assert_eq!(
            parse_value(&integer, "-1").unwrap_err(),
            "expected a non-negative integer, got \"-1\""
        );
        assert!(parse_value(&integer, "7s").is_err());
        assert!(parse_value(&ValueKind::Number, "NaN").is_err());
        assert_eq!(
            parse_value(&ValueKind::Boolean, "yes").unwrap_err(),
            "expected true or false, got \"yes\""
        );
        let words = ValueKind::OneOf(vec!["passthrough".into(), "deny".into()]);
        assert_eq!(
            parse_value(&words, "allow").unwrap_err(),
            "expected one of passthrough, deny, got \"allow\""
        );
        // A string is taken verbatim: `8080` stays a string for a host:port setting.
        assert_eq!(
            parse_value(&ValueKind::String, "0.0.0.0:1"),
            Ok(serde_yaml::Value::String("0.0.0.0:1".into()))
        );
    }

    #[test]
    fn apply_creates_missing_sections_and_reports_by_variable() {
        let mut document: serde_yaml::Value =
            serde_yaml::from_str("quay: {service: q, realm: https://q/v2/auth}\njwks:\n")
                .expect("yaml");
        let vars = relevant([
            ("QUAY_AUTHZ_JWKS_MAX_KEYS".to_string(), "7".to_string()),
            ("QUAY_AUTHZ_LIMITS_MAX_TOKEN_BYTES".into(), "lots".into()),
            ("QUAY_AUTHZ_HEADERS_PREFIX".into(), "x-id-".into()),
            ("QUAY_AUTHZ_NO_SUCH_THING".into(), "secret-value".into()),
            ("QUAY_AUTHZ_LOG".into(), "debug".into()),
            ("QUAY_AUTHZ_SERVICE_HOST".into(), "10.0.0.1".into()),
            (
                "QUAY_AUTHZ_PORT_9191_TCP".into(),
                "tcp://10.0.0.1:9191".into(),
            ),
            ("HOME".into(), "/root".into()),
        ]);
        let outcome = apply(&mut document, &vars);
        assert_eq!(document["jwks"]["max_keys"].as_u64(), Some(7));
        assert_eq!(document["headers"]["prefix"].as_str(), Some("x-id-"));
        assert_eq!(document["quay"]["service"].as_str(), Some("q"));
        assert_eq!(
            outcome
                .applied
                .iter()
                .map(|a| a.field.as_str())
                .collect::<Vec<_>>(),
            ["headers.prefix", "jwks.max_keys"]
        );
        assert_eq!(outcome.issues.len(), 1);
        assert_eq!(
            outcome.issues[0].field,
            "env QUAY_AUTHZ_LIMITS_MAX_TOKEN_BYTES"
        );
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        assert!(outcome.warnings[0].contains("QUAY_AUTHZ_NO_SUCH_THING"));
        assert!(!outcome.warnings[0].contains("secret-value"));
    }

    #[test]
    fn optional_sections_are_walked_too() {
        let schema = serde_json::json!({
            "properties": {"listen": {"anyOf": [{"$ref": "#/$defs/Tls"}, {"type": "null"}]}},
            "$defs": {"Tls": {"properties": {"cert": {"type": ["string", "null"]}}}}
        });
        let mut found = Vec::new();
        collect(&schema, &schema, true, &mut Vec::new(), &mut found);
        assert_eq!(found[0].variable, "QUAY_AUTHZ_LISTEN_CERT");
        assert_eq!(found[0].kind, ValueKind::String);
    }

    #[test]
    fn a_section_that_is_not_a_mapping_is_reported() {
        let mut document: serde_yaml::Value = serde_yaml::from_str("jwks: 5\n").expect("yaml");
        let vars = vec![("QUAY_AUTHZ_JWKS_MAX_KEYS".to_string(), "7".to_string())];
        let outcome = apply(&mut document, &vars);
        assert_eq!(
            outcome.issues[0].message,
            "jwks in the file is not a mapping"
        );
    }

    #[test]
    fn a_proxy_url_with_credentials_is_applied_but_not_shown() {
        let mut document: serde_yaml::Value = serde_yaml::from_str("{}").expect("yaml");
        let url = "http://user:hunter2@proxy:3128";
        let vars = vec![("QUAY_AUTHZ_JWKS_PROXY".to_string(), url.to_string())];
        let outcome = apply(&mut document, &vars);
        assert_eq!(document["jwks"]["proxy"].as_str(), Some(url));
        assert_eq!(outcome.applied[0].field, "jwks.proxy");
        assert!(!outcome.applied[0].value.contains("hunter2"));
    }

    #[test]
    fn a_redis_store_url_with_a_password_is_applied_but_not_shown() {
        let mut document: serde_yaml::Value = serde_yaml::from_str("bridge: {}").expect("yaml");
        let url = "redis://:hunter2@redis:6379/0";
        let vars = vec![("QUAY_AUTHZ_BRIDGE_STORE".to_string(), url.to_string())];
        let outcome = apply(&mut document, &vars);
        assert_eq!(document["bridge"]["store"].as_str(), Some(url));
        assert_eq!(outcome.applied[0].field, "bridge.store");
        assert!(!outcome.applied[0].value.contains("hunter2"));
    }
}
