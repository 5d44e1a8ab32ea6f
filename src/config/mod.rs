//! Configuration: the YAML contract operators write, and its compiled runtime form.
//!
//! Usage: `Config::load(path)` reads and validates a file; `Config::parse(text, origin)` does the
//! same for text. The raw serde types (`raw::*`) mirror the YAML exactly and refuse unknown
//! fields; `build` compiles them once into `Config`, whose values are already checked, so the
//! per-Check path never re-validates anything (as linkerd2-proxy compiles its policy).
//!
//! Every error names the file, the line where the offending field stands (best effort), the
//! field path (`issuers[1].audiences`) and what is expected.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod env;

use crate::model::claims::is_tenant_id;
use crate::model::identity::Interner;
use crate::policy::{CompiledRule, compile_rules};
use env::AppliedOverride;

/// The issuer string GitHub Actions puts in its OIDC tokens.
pub const GITHUB_ACTIONS_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// Entra's login host, for v2.0 issuers and every discovery and key endpoint.
pub const ENTRA_LOGIN: &str = "https://login.microsoftonline.com";
/// Entra's v1.0 token issuer host (`iss = https://sts.windows.net/{tid}/`).
pub const ENTRA_V1_ISSUER_HOST: &str = "https://sts.windows.net";

// === Errors ===

/// One thing wrong with a configuration, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub line: Option<usize>,
    /// Field path such as `issuers[0].audiences`; empty for the whole document.
    pub field: String,
    pub message: String,
}

/// Everything wrong with one configuration file: reported together, so an operator fixes a
/// file in one pass instead of one error per run.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub origin: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, issue) in self.issues.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.origin)?;
            if let Some(line) = issue.line {
                write!(f, ":{line}")?;
            }
            if issue.field.is_empty() {
                write!(f, ": {}", issue.message)?;
            } else {
                write!(f, ": {}: {}", issue.field, issue.message)?;
            }
        }
        Ok(())
    }
}

// === Raw YAML types ===

pub mod bridge;
pub mod raw;

pub use raw::{NonApi, Preset, Unauthenticated};

// === Compiled configuration ===

/// A validated configuration, ready to serve.
#[derive(Debug)]
pub struct Config {
    pub origin: String,
    pub listen: Listen,
    pub quay: raw::Quay,
    pub unauthenticated: Unauthenticated,
    pub headers: HeaderSettings,
    pub max_token_bytes: usize,
    pub token_cache_entries: usize,
    pub token_cache_bytes: usize,
    pub jwks: JwksSettings,
    pub non_api: NonApi,
    pub issuers: Vec<IssuerConfig>,
    pub rules: Vec<CompiledRule>,
    pub audit: AuditSettings,
    /// The identity bridge (`bridge:`); None: off.
    pub bridge: Option<bridge::BridgeSettings>,
    pub shutdown_grace: Duration,
    /// `QUAY_AUTHZ_…` environment variables that replaced values of the file.
    pub overrides: Vec<AppliedOverride>,
    /// Warnings worth an operator's eye that do not stop the configuration from serving.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The gRPC listener's TLS identity, already read and checked; None serves plaintext.
    pub grpc_tls: Option<crate::tls::ServerTls>,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Fraction of allow events written to the audit log, in [0, 1].
    pub allow_sample_rate: f64,
}

#[derive(Debug, Clone)]
pub struct HeaderSettings {
    pub prefix: String,
    pub remove_authorization: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JwksSettings {
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub min_refetch_interval: Duration,
    pub max_refresh_interval: Duration,
    pub fetch_timeout: Duration,
    pub max_response_bytes: usize,
    pub max_keys: usize,
    pub stale_limit: Duration,
    /// Extra trusted roots for fetches (`jwks.ca_file`), already parsed.
    pub ca_certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub proxy: FetchProxy,
}

/// How discovery and JWKS fetches reach the network (`jwks.proxy`,
/// `jwks.proxy_from_environment`).
#[derive(Clone, PartialEq, Eq)]
pub enum FetchProxy {
    /// The proxy environment variables decide (the default).
    Environment,
    /// Straight to the IdP, whatever the environment says.
    Direct,
    /// Through `url`, except for the hosts in `no_proxy`; the environment is ignored.
    Explicit { url: String, no_proxy: Vec<String> },
}

/// The proxy URL may carry credentials: debug output shows only that one is set.
impl fmt::Debug for FetchProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Environment => f.write_str("Environment"),
            Self::Direct => f.write_str("Direct"),
            Self::Explicit { no_proxy, .. } => f
                .debug_struct("Explicit")
                .field("url", &"<set>")
                .field("no_proxy", no_proxy)
                .finish(),
        }
    }
}

/// Signature algorithms an issuer may use. HMAC is not representable: a public-key issuer's
/// token signed with HS256 must never validate (the classic key-confusion attack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl SigningAlgorithm {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// How the tenant of an Entra token is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantBinding {
    /// Not an Entra issuer.
    None,
    /// Listed tenants; each contributes its v1 and v2 issuer string.
    Listed(Vec<String>),
    /// `tenants: any`: every Entra tenant (explicit, logged opt-in).
    Any,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyLocation {
    /// OIDC discovery document; its `jwks_uri` is fetched next.
    Discovery(String),
    /// The JWKS itself.
    Jwks(String),
}

impl KeyLocation {
    pub fn url(&self) -> &str {
        match self {
            Self::Discovery(url) | Self::Jwks(url) => url,
        }
    }
}

/// One source of keys and the issuer strings it may vouch for (checked against a discovery
/// document's `issuer`, OpenID Connect Discovery §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySourceConfig {
    pub location: KeyLocation,
    pub expected_issuers: Vec<String>,
    pub allow_insecure_http: bool,
}

/// One configured, trusted issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub name: String,
    pub preset: Preset,
    /// Exact `iss` values this entry accepts, each with the key source that holds its keys
    /// (an index into `key_sources`) and, for Entra, the tenant it names.
    pub issuer_strings: Vec<IssuerString>,
    pub tenants: TenantBinding,
    pub key_sources: Vec<KeySourceConfig>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<SigningAlgorithm>,
    pub leeway_seconds: u64,
    pub username_claims: Vec<String>,
    pub groups_claims: Vec<String>,
    pub default_groups: Vec<String>,
    pub required_claims: BTreeMap<String, serde_json::Value>,
    pub required: bool,
    /// Tokens whose `typ` or `nonce` mark them as ID tokens are accepted (opt-in, warned).
    pub accept_id_tokens: bool,
    /// What Quay receives once this issuer's token is allowed.
    pub upstream: raw::Upstream,
    /// `upstream: exchange`: how the caller is named in bridge tokens.
    pub bridge_identity: Option<bridge::BridgeIdentity>,
    /// The claims this configuration can read of this issuer's tokens, sorted: an identity
    /// keeps only these (issue 14 item 2; see [`claims_read`]).
    pub claims_read: Box<[Arc<str>]>,
    /// Strings this issuer's identities share instead of copying (its name, `iss` values,
    /// tenants, audiences, default groups, the groups its rules name).
    pub strings: Interner,
    /// `name`, shared by every identity of this issuer.
    pub shared_name: Arc<str>,
}

impl IssuerConfig {
    /// The allowed algorithms as written in the configuration (`RS256, ES256`), for messages.
    pub fn algorithm_names(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone)]
pub struct IssuerString {
    pub iss: String,
    pub tenant: Option<String>,
    pub key_source: usize,
}

// === Loading ===

impl Config {
    /// Reads and validates a configuration file, with the process's `QUAY_AUTHZ_…` environment
    /// overrides applied (on every reload too, so a reload never drops them).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            origin: origin.clone(),
            issues: vec![ConfigIssue {
                line: None,
                field: String::new(),
                message: format!("cannot read the file: {error}"),
            }],
        })?;
        Self::parse_with_env(&text, &origin, env::process_vars())
    }

    /// Parses and validates configuration text; `origin` names it in errors. The environment
    /// is not read.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let document: raw::Document = serde_yaml::from_str(text).map_err(|error| {
            let (field, message) = split_serde_message(&error.to_string());
            ConfigError {
                origin: origin.to_string(),
                issues: vec![ConfigIssue {
                    line: error.location().map(|location| location.line()),
                    field,
                    message,
                }],
            }
        })?;
        build(document, text, origin)
    }

    /// Like `parse`, with `QUAY_AUTHZ_…` overrides from `vars` written into the YAML before
    /// the typed build, so they meet the same checks as the file. An issue with an overridden
    /// setting names its variable instead of a line of the file.
    pub fn parse_with_env<I>(text: &str, origin: &str, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars = env::relevant(vars);
        if vars.is_empty() {
            return Self::parse(text, origin);
        }
        let fail = |issues: Vec<ConfigIssue>| ConfigError {
            origin: origin.to_string(),
            issues,
        };
        let mut yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|error| {
            fail(vec![ConfigIssue {
                line: error.location().map(|location| location.line()),
                field: String::new(),
                message: split_serde_message(&error.to_string()).1,
            }])
        })?;
        let outcome = env::apply(&mut yaml, &vars);
        if !outcome.issues.is_empty() {
            return Err(fail(outcome.issues));
        }
        let name_variable = |mut issue: ConfigIssue| {
            let overridden = outcome.applied.iter().find(|applied| {
                issue.field == applied.field
                    || issue.field.starts_with(&format!("{}.", applied.field))
            });
            if let Some(applied) = overridden {
                issue.line = None;
                issue.field = format!("{} (env {})", issue.field, applied.variable);
            }
            issue
        };
        // Re-serialised so serde_yaml reports field paths as it does for the file; lines are
        // then looked up in the file itself.
        let merged = serde_yaml::to_string(&yaml).unwrap_or_default();
        let document: raw::Document = serde_yaml::from_str(&merged).map_err(|error| {
            let (field, message) = split_serde_message(&error.to_string());
            fail(vec![name_variable(ConfigIssue {
                line: (!field.is_empty())
                    .then(|| locate_field(text, &field))
                    .flatten(),
                field,
                message,
            })])
        })?;
        let mut config = build(document, text, origin)
            .map_err(|error| fail(error.issues.into_iter().map(name_variable).collect()))?;
        config.warnings.extend(outcome.warnings);
        config.overrides = outcome.applied;
        Ok(config)
    }

    /// The issuer named `name`.
    pub fn issuer(&self, name: &str) -> Option<&IssuerConfig> {
        self.issuers.iter().find(|issuer| issuer.name == name)
    }
}

/// serde_yaml reports `issuers[0]: unknown field ...` or `issuers[0].audiences: invalid ...`;
/// split the path from the message so our format puts each in its place.
fn split_serde_message(message: &str) -> (String, String) {
    let message = match message.rfind(" at line ") {
        Some(index) => &message[..index],
        None => message,
    };
    if let Some((field, rest)) = message.split_once(": ") {
        let looks_like_path = !field.is_empty()
            && !field.contains(' ')
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.[]-".contains(c));
        if looks_like_path {
            return (field.to_string(), rest.to_string());
        }
    }
    (String::new(), message.to_string())
}

/// Collects issues while compiling, each located in the source text.
struct Issues<'a> {
    text: &'a str,
    found: Vec<ConfigIssue>,
}

impl Issues<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        self.found.push(ConfigIssue {
            line: locate_field(self.text, &field),
            field,
            message: message.into(),
        });
    }

    /// For a field that may be missing from the file (what it asks to add): the line is the
    /// nearest enclosing field that is there, such as the rule's own line.
    fn push_near(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        let mut path = field.as_str();
        let line = loop {
            if let Some(line) = locate_field(self.text, path) {
                break Some(line);
            }
            match path.rfind('.') {
                Some(dot) => path = &path[..dot],
                None => break None,
            }
        };
        self.found.push(ConfigIssue {
            line,
            field,
            message: message.into(),
        });
    }
}

fn build(document: raw::Document, text: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut issues = Issues {
        text,
        found: Vec::new(),
    };
    let mut warnings = Vec::new();

    let listen = build_listen(&document.listen, &mut issues);

    if document.quay.service.trim().is_empty() {
        issues.push(
            "quay.service",
            "must name Quay's host (for example quay.example.com)",
        );
    }
    if !(document.quay.realm.starts_with("https://") || document.quay.realm.starts_with("http://"))
    {
        issues.push(
            "quay.realm",
            "must be an http(s) URL, the Docker token realm",
        );
    }
    let prefix = document.headers.prefix.to_ascii_lowercase();
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        issues.push(
            "headers.prefix",
            "must be a non-empty header-name prefix of letters, digits, '-' and '_'",
        );
    }
    if document.limits.max_token_bytes < 256 {
        issues.push("limits.max_token_bytes", "must be at least 256");
    }
    let jwks = build_jwks(&document.jwks, &mut issues);
    let rate = document.audit.allow_sample_rate;
    if !(0.0..=1.0).contains(&rate) {
        issues.push(
            "audit.allow_sample_rate",
            format!("must be between 0 and 1, got {rate}"),
        );
    }

    let bridge = document
        .bridge
        .as_ref()
        .and_then(|raw| bridge::build_bridge(raw, &mut issues));

    let mut issuers: Vec<IssuerConfig> = Vec::new();
    if document.issuers.is_empty() {
        issues.push("issuers", "at least one issuer must be configured");
    }
    for (index, raw_issuer) in document.issuers.iter().enumerate() {
        let field = format!("issuers[{index}]");
        let bridge_identity = bridge::build_bridge_identity(
            raw_issuer,
            &field,
            document.bridge.is_some(),
            &mut issues,
        );
        if let Some(mut issuer) = build_issuer(raw_issuer, &field, &mut issues, &mut warnings) {
            issuer.bridge_identity = bridge_identity;
            issuers.push(issuer);
        }
    }
    check_issuer_uniqueness(&issuers, &mut issues);
    bridge::check_own_issuer(bridge.as_ref(), &issuers, &mut issues);
    bridge::check_subject_prefixes(&issuers, &mut issues);

    let issuer_names: Vec<&str> = issuers.iter().map(|issuer| issuer.name.as_str()).collect();
    let rules = match compile_rules(&document.rules, &issuer_names) {
        Ok((rules, rule_warnings)) => {
            warnings.extend(rule_warnings);
            rules
        }
        Err(rule_issues) => {
            for (field, message) in rule_issues {
                issues.push(field, message);
            }
            Vec::new()
        }
    };

    warnings.extend(unmatchable_rules(&rules, &issuers));
    for issuer in &mut issuers {
        share_strings(issuer, &rules);
    }
    check_rule_trust(&document.rules, &issuers, &mut issues, &mut warnings);

    if !issues.found.is_empty() {
        return Err(ConfigError {
            origin: origin.to_string(),
            issues: issues.found,
        });
    }
    Ok(Config {
        origin: origin.to_string(),
        listen: listen.unwrap_or_else(unreachable_listen),
        quay: document.quay,
        unauthenticated: document.unauthenticated,
        headers: HeaderSettings {
            prefix,
            remove_authorization: document.headers.remove_authorization,
        },
        max_token_bytes: document.limits.max_token_bytes,
        token_cache_entries: document.limits.token_cache_entries,
        token_cache_bytes: document.limits.token_cache_bytes,
        jwks,
        non_api: document.paths.non_api,
        issuers,
        rules,
        audit: AuditSettings {
            allow_sample_rate: rate,
        },
        bridge,
        shutdown_grace: Duration::from_secs(document.shutdown_grace_seconds),
        overrides: Vec::new(),
        warnings,
    })
}

/// Only reached when `build_listen` failed, and then an issue was recorded and `build`
/// returned early; kept total so no `unwrap` is needed.
fn unreachable_listen() -> Listen {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Listen {
        grpc: any,
        http: any,
        admin: any,
        grpc_tls: None,
    }
}

fn build_listen(raw: &raw::Listen, issues: &mut Issues<'_>) -> Option<Listen> {
    let mut parse = |field: &str, value: &str| match value.parse::<SocketAddr>() {
        Ok(address) => Some(address),
        Err(_) => {
            issues.push(
                format!("listen.{field}"),
                format!("expected host:port with an IP address, got {value:?}"),
            );
            None
        }
    };
    let grpc = parse("grpc", &raw.grpc);
    let http = parse("http", &raw.http);
    let admin = parse("admin", &raw.admin).filter(|admin| {
        let loopback = admin.ip().is_loopback();
        if !loopback {
            issues.push(
                "listen.admin",
                "the admin API explains decisions and must listen on a loopback address",
            );
        }
        loopback
    });
    let grpc_tls = raw
        .grpc_tls
        .as_ref()
        .and_then(|tls| build_grpc_tls(tls, issues));
    Some(Listen {
        grpc: grpc?,
        http: http?,
        admin: admin?,
        grpc_tls,
    })
}

/// Reads the certificate, key and client CA now, so a configuration naming unusable files is
/// rejected whole (at startup, `check-config` and reload alike).
fn build_grpc_tls(raw: &raw::GrpcTls, issues: &mut Issues<'_>) -> Option<crate::tls::ServerTls> {
    let files = crate::tls::ServerTlsFiles {
        cert_file: raw.cert_file.clone().into(),
        key_file: raw.key_file.clone().into(),
        client_ca_file: raw.client_ca_file.clone().map(Into::into),
    };
    match crate::tls::ServerTls::load(&files) {
        Ok(loaded) => Some(loaded),
        Err(error) => {
            issues.push(
                format!("listen.grpc_tls.{}", error.field()),
                error.to_string(),
            );
            None
        }
    }
}

fn build_jwks(raw: &raw::Jwks, issues: &mut Issues<'_>) -> JwksSettings {
    if raw.min_ttl_seconds == 0 || raw.min_ttl_seconds > raw.max_ttl_seconds {
        issues.push(
            "jwks.min_ttl_seconds",
            "must be positive and not above jwks.max_ttl_seconds",
        );
    }
    if raw.fetch_timeout_seconds == 0 {
        issues.push("jwks.fetch_timeout_seconds", "must be positive");
    }
    if raw.max_refresh_interval_seconds == 0 {
        issues.push("jwks.max_refresh_interval_seconds", "must be positive");
    }
    if raw.max_keys == 0 {
        issues.push("jwks.max_keys", "must be positive");
    }
    if raw.max_response_bytes < 1024 {
        issues.push("jwks.max_response_bytes", "must be at least 1024");
    }
    let ca_certificates = match &raw.ca_file {
        Some(path) => {
            crate::tls::read_certificates(Path::new(path), "ca_file").unwrap_or_else(|error| {
                issues.push("jwks.ca_file", error.to_string());
                Vec::new()
            })
        }
        None => Vec::new(),
    };
    let proxy = build_fetch_proxy(raw, issues);
    JwksSettings {
        default_ttl: Duration::from_secs(raw.default_ttl_seconds),
        min_ttl: Duration::from_secs(raw.min_ttl_seconds),
        max_ttl: Duration::from_secs(raw.max_ttl_seconds),
        min_refetch_interval: Duration::from_secs(raw.min_refetch_interval_seconds),
        max_refresh_interval: Duration::from_secs(raw.max_refresh_interval_seconds),
        fetch_timeout: Duration::from_secs(raw.fetch_timeout_seconds),
        max_response_bytes: raw.max_response_bytes,
        max_keys: raw.max_keys,
        stale_limit: Duration::from_secs(raw.stale_limit_seconds),
        ca_certificates,
        proxy,
    }
}

fn build_fetch_proxy(raw: &raw::Jwks, issues: &mut Issues<'_>) -> FetchProxy {
    let Some(url) = &raw.proxy else {
        if !raw.no_proxy.is_empty() {
            issues.push(
                "jwks.no_proxy",
                "applies only with jwks.proxy; with the environment's proxy, set NO_PROXY",
            );
        }
        return match raw.proxy_from_environment {
            Some(false) => FetchProxy::Direct,
            _ => FetchProxy::Environment,
        };
    };
    if raw.proxy_from_environment == Some(true) {
        issues.push(
            "jwks.proxy_from_environment",
            "cannot be true together with jwks.proxy: choose the configured proxy or the environment's",
        );
    }
    // The URL may hold credentials: messages describe it without echoing it.
    let usable = reqwest::Url::parse(url).is_ok_and(|parsed| {
        matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some()
    }) && reqwest::Proxy::all(url.as_str()).is_ok();
    if !usable {
        issues.push(
            "jwks.proxy",
            "expected a proxy URL such as http://proxy.example.com:3128 (http or https)",
        );
    }
    FetchProxy::Explicit {
        url: url.clone(),
        no_proxy: raw.no_proxy.clone(),
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_url(field: &str, url: &str, allow_insecure_http: bool, issues: &mut Issues<'_>) -> bool {
    if url.starts_with("https://") && url.len() > "https://".len() {
        return true;
    }
    if url.starts_with("http://") {
        if allow_insecure_http {
            return true;
        }
        issues.push(
            field,
            "must be https (set allow_insecure_http: true only for tests and loopback)",
        );
        return false;
    }
    issues.push(field, format!("expected an https URL, got {url:?}"));
    false
}

/// One exact `iss` whose keys come from `key_override` or else from that issuer's own
/// discovery document: the shape of the `oidc` and `github-actions` presets.
fn single_issuer(
    iss: String,
    key_override: Option<KeyLocation>,
    allow_insecure_http: bool,
) -> (Vec<IssuerString>, Vec<KeySourceConfig>) {
    let location = key_override.unwrap_or_else(|| {
        KeyLocation::Discovery(format!(
            "{}/.well-known/openid-configuration",
            iss.trim_end_matches('/')
        ))
    });
    (
        vec![IssuerString {
            iss: iss.clone(),
            tenant: None,
            key_source: 0,
        }],
        vec![KeySourceConfig {
            location,
            expected_issuers: vec![iss],
            allow_insecure_http,
        }],
    )
}

fn build_issuer(
    raw: &raw::Issuer,
    field: &str,
    issues: &mut Issues<'_>,
    warnings: &mut Vec<String>,
) -> Option<IssuerConfig> {
    let before = issues.found.len();
    if !is_valid_name(&raw.name) {
        issues.push(
            format!("{field}.name"),
            "expected 1-64 letters, digits, '-' or '_' (used in rules, metrics and headers)",
        );
    }
    if raw.audiences.is_empty() {
        issues.push(
            format!("{field}.audiences"),
            "at least one audience is required: a token is accepted only when its aud intersects this list",
        );
    }
    if raw
        .audiences
        .iter()
        .any(|audience| audience.trim().is_empty())
    {
        issues.push(
            format!("{field}.audiences"),
            "audiences must not be empty strings",
        );
    }

    let algorithms = match &raw.algorithms {
        None => vec![SigningAlgorithm::RS256],
        Some(names) if names.is_empty() => {
            issues.push(format!("{field}.algorithms"), "must list at least one algorithm");
            Vec::new()
        }
        Some(names) => names
            .iter()
            .filter_map(|name| match SigningAlgorithm::from_name(name) {
                Some(algorithm) => Some(algorithm),
                None => {
                    let why = if name.starts_with("HS") || name.eq_ignore_ascii_case("none") {
                        "is never accepted (HMAC and 'none' are forbidden for issuers with public keys)"
                    } else {
                        "is not a supported algorithm"
                    };
                    issues.push(
                        format!("{field}.algorithms"),
                        format!(
                            "{name:?} {why}; expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
                        ),
                    );
                    None
                }
            })
            .collect(),
    };

    for (url_field, url) in [("discovery", &raw.discovery), ("jwks_uri", &raw.jwks_uri)] {
        if let Some(url) = url {
            check_url(
                &format!("{field}.{url_field}"),
                url,
                raw.allow_insecure_http,
                issues,
            );
        }
    }
    if raw.discovery.is_some() && raw.jwks_uri.is_some() {
        issues.push(
            format!("{field}.jwks_uri"),
            "set either discovery or jwks_uri, not both (jwks_uri skips discovery)",
        );
    }
    let key_override = match (&raw.jwks_uri, &raw.discovery) {
        (Some(url), _) => Some(KeyLocation::Jwks(url.clone())),
        (None, Some(url)) => Some(KeyLocation::Discovery(url.clone())),
        (None, None) => None,
    };

    let (issuer_strings, tenants, key_sources, username_default, groups_default) = match raw.preset
    {
        Preset::Oidc => {
            if raw.tenants.is_some() {
                issues.push(
                    format!("{field}.tenants"),
                    "only the entra preset takes tenants",
                );
            }
            let Some(iss) = raw.issuer.clone() else {
                issues.push(
                    format!("{field}.issuer"),
                    "the oidc preset needs the exact issuer (the tokens' iss)",
                );
                return None;
            };
            if !check_url(
                &format!("{field}.issuer"),
                &iss,
                raw.allow_insecure_http,
                issues,
            ) {
                return None;
            }
            let (strings, sources) = single_issuer(iss, key_override, raw.allow_insecure_http);
            (
                strings,
                TenantBinding::None,
                sources,
                vec!["preferred_username", "email", "sub"],
                vec!["groups", "roles"],
            )
        }
        Preset::GithubActions => {
            if raw.tenants.is_some() {
                issues.push(
                    format!("{field}.tenants"),
                    "only the entra preset takes tenants",
                );
            }
            // An overridden issuer is where discovery goes: the same https rule as oidc's.
            let iss = match &raw.issuer {
                Some(iss) => {
                    if !check_url(
                        &format!("{field}.issuer"),
                        iss,
                        raw.allow_insecure_http,
                        issues,
                    ) {
                        return None;
                    }
                    iss.clone()
                }
                None => GITHUB_ACTIONS_ISSUER.to_string(),
            };
            let (strings, sources) = single_issuer(iss, key_override, raw.allow_insecure_http);
            (strings, TenantBinding::None, sources, vec!["sub"], vec![])
        }
        Preset::Entra => {
            if raw.issuer.is_some() {
                issues.push(
                    format!("{field}.issuer"),
                    "the entra preset derives its issuers from tenants; remove issuer",
                );
            }
            let tenants = match &raw.tenants {
                Some(raw::Tenants::Keyword(word)) if word == "any" => {
                    // Audiences do not narrow this: a multi-tenant app has the same client id
                    // and App ID URI in every tenant, and each tenant's admins assign its roles.
                    warnings.push(format!(
                        "issuer {:?} accepts tokens from ANY Entra tenant (tenants: any): the \
                         administrators of every tenant can assign your app's roles and groups \
                         to anyone, and audiences are the same in every tenant; each rule for \
                         this issuer must name the tenants it trusts (when.tenants)",
                        raw.name
                    ));
                    TenantBinding::Any
                }
                Some(raw::Tenants::Keyword(word)) => {
                    issues.push(
                        format!("{field}.tenants"),
                        format!("expected a list of tenant ids or the word any, got {word:?}"),
                    );
                    return None;
                }
                Some(raw::Tenants::List(list)) if !list.is_empty() => {
                    let mut tenants = Vec::new();
                    for tenant in list {
                        let tenant = tenant.to_ascii_lowercase();
                        if is_tenant_id(&tenant) {
                            tenants.push(tenant);
                        } else {
                            issues.push(
                                format!("{field}.tenants"),
                                format!("{tenant:?} is not a tenant id (a GUID such as 11111111-2222-3333-4444-555555555555)"),
                            );
                        }
                    }
                    TenantBinding::Listed(tenants)
                }
                _ => {
                    issues.push(
                        format!("{field}.tenants"),
                        "the entra preset needs tenants: a list of tenant ids, or any",
                    );
                    return None;
                }
            };
            let (issuer_strings, key_sources) = entra_issuers(&tenants, key_override, raw);
            (
                issuer_strings,
                tenants,
                key_sources,
                vec![
                    "preferred_username",
                    "upn",
                    "email",
                    "unique_name",
                    "oid",
                    "sub",
                ],
                vec!["roles", "groups"],
            )
        }
    };

    let username_claims = raw
        .username_claims
        .clone()
        .unwrap_or_else(|| username_default.iter().map(|s| s.to_string()).collect());
    if username_claims.is_empty() {
        issues.push(
            format!("{field}.username_claims"),
            "must name at least one claim",
        );
    }
    let groups_claims = raw
        .groups_claims
        .clone()
        .unwrap_or_else(|| groups_default.iter().map(|s| s.to_string()).collect());
    for (claim, value) in &raw.required_claims {
        if value.is_object() || value.is_null() {
            issues.push(
                format!("{field}.required_claims.{claim}"),
                "expected a string, number, boolean or list of them",
            );
        }
    }

    if raw.accept_id_tokens {
        warnings.push(format!(
            "issuer {:?} accepts ID tokens as access tokens (accept_id_tokens: true): an ID \
             token any client of this IdP obtained for the same audience is then a credential",
            raw.name
        ));
    }

    if issues.found.len() > before {
        return None;
    }
    Some(IssuerConfig {
        name: raw.name.clone(),
        preset: raw.preset,
        issuer_strings,
        tenants,
        key_sources,
        audiences: raw.audiences.clone(),
        algorithms,
        leeway_seconds: raw.leeway_seconds.unwrap_or(60),
        username_claims,
        groups_claims,
        default_groups: raw.default_groups.clone(),
        required_claims: raw.required_claims.clone(),
        required: raw.required.unwrap_or(true),
        accept_id_tokens: raw.accept_id_tokens,
        upstream: raw.upstream,
        bridge_identity: None,
        claims_read: Box::default(),
        strings: Interner::default(),
        shared_name: Arc::from(raw.name.as_str()),
    })
}

/// The claims the configuration can read of `issuer`'s tokens once verified, sorted and without
/// duplicates: `when.claims` and `{claims.NAME}` of every rule that can apply to it, and for an
/// `upstream: exchange` issuer also its bridge templates (with `sub`, named in the mint's audit
/// event, and `email_verified` when it has an email template) and what an exchanged token is
/// rebuilt from (`authn::exchanged`: `username_claims`, `groups_claims`, `required_claims`).
/// An identity keeps only these claims (issue 14 item 2): username, groups, `iss`, `aud`,
/// tenant and client are its typed fields, and the rest of a token is never read again.
pub fn claims_read<'a>(issuer: &'a IssuerConfig, rules: &'a [CompiledRule]) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    if issuer.upstream == raw::Upstream::Exchange {
        names.extend(issuer.username_claims.iter().map(String::as_str));
        names.extend(issuer.groups_claims.iter().map(String::as_str));
        names.extend(issuer.required_claims.keys().map(String::as_str));
    }
    if let Some(bridge) = &issuer.bridge_identity {
        names.push("sub");
        names.extend(bridge.subject.claims_read());
        names.extend(bridge.username.claims_read());
        if let Some(email) = &bridge.email {
            names.push("email_verified");
            names.extend(email.claims_read());
        }
    }
    for rule in applicable(rules, issuer) {
        names.extend(rule.claims_read());
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// The rules that can apply to `issuer`'s identities (`issuers:` empty or naming it).
fn applicable<'a>(
    rules: &'a [CompiledRule],
    issuer: &'a IssuerConfig,
) -> impl Iterator<Item = &'a CompiledRule> {
    rules
        .iter()
        .filter(|rule| rule.issuers.is_empty() || rule.issuers.contains(&issuer.name))
}

/// Fills `claims_read` and `strings` of `issuer` once per configuration.
fn share_strings(issuer: &mut IssuerConfig, rules: &[CompiledRule]) {
    issuer.claims_read = claims_read(issuer, rules)
        .into_iter()
        .map(Arc::from)
        .collect();
    let mut strings = Interner::default();
    issuer.shared_name = strings.insert(&issuer.name);
    for string in &issuer.issuer_strings {
        strings.insert(&string.iss);
        if let Some(tenant) = &string.tenant {
            strings.insert(tenant);
        }
    }
    strings.insert_list(&issuer.audiences);
    strings.insert_list(&issuer.default_groups);
    strings.insert_list(&[]);
    for rule in applicable(rules, issuer) {
        for group in rule.when.groups_any.iter().chain(&rule.when.groups_all) {
            strings.insert(group);
        }
        for tenant in &rule.when.tenants {
            strings.insert(tenant);
        }
    }
    issuer.strings = strings;
}

/// Entra publishes v1 (`sts.windows.net/{tid}/`) and v2 (`login.microsoftonline.com/{tid}/v2.0`)
/// tokens; which one a client gets depends on the API's `accessTokenAcceptedVersion`, not on the
/// endpoint it used (Entra access token reference), so one entry accepts both. Each has its own
/// discovery document; an explicit `discovery`/`jwks_uri` override serves every issuer string.
fn entra_issuers(
    tenants: &TenantBinding,
    key_override: Option<KeyLocation>,
    raw: &raw::Issuer,
) -> (Vec<IssuerString>, Vec<KeySourceConfig>) {
    let mut issuer_strings = Vec::new();
    let mut key_sources = Vec::new();
    let listed: &[String] = match tenants {
        TenantBinding::Listed(list) => list,
        _ => &[],
    };
    // The multi-tenant discovery documents carry a `{tenantid}` template, not a real issuer.
    let template_issuers = vec![
        format!("{ENTRA_V1_ISSUER_HOST}/{{tenantid}}/"),
        format!("{ENTRA_LOGIN}/{{tenantid}}/v2.0"),
    ];
    if let Some(location) = key_override {
        let mut expected: Vec<String> = template_issuers;
        for tenant in listed {
            for iss in entra_issuer_pair(tenant) {
                expected.push(iss.clone());
                issuer_strings.push(IssuerString {
                    iss,
                    tenant: Some(tenant.clone()),
                    key_source: 0,
                });
            }
        }
        key_sources.push(KeySourceConfig {
            location,
            expected_issuers: expected,
            allow_insecure_http: raw.allow_insecure_http,
        });
        return (issuer_strings, key_sources);
    }
    if matches!(tenants, TenantBinding::Any) {
        // Entra signs every tenant's tokens with the same keys, published at `common`.
        key_sources.push(KeySourceConfig {
            location: KeyLocation::Jwks(format!("{ENTRA_LOGIN}/common/discovery/v2.0/keys")),
            expected_issuers: template_issuers,
            allow_insecure_http: false,
        });
        return (issuer_strings, key_sources);
    }
    for tenant in listed {
        let [v1, v2] = entra_issuer_pair(tenant);
        let v1_source = key_sources.len();
        key_sources.push(KeySourceConfig {
            location: KeyLocation::Discovery(format!(
                "{ENTRA_LOGIN}/{tenant}/.well-known/openid-configuration"
            )),
            expected_issuers: vec![v1.clone()],
            allow_insecure_http: false,
        });
        key_sources.push(KeySourceConfig {
            location: KeyLocation::Discovery(format!(
                "{ENTRA_LOGIN}/{tenant}/v2.0/.well-known/openid-configuration"
            )),
            expected_issuers: vec![v2.clone()],
            allow_insecure_http: false,
        });
        issuer_strings.push(IssuerString {
            iss: v1,
            tenant: Some(tenant.clone()),
            key_source: v1_source,
        });
        issuer_strings.push(IssuerString {
            iss: v2,
            tenant: Some(tenant.clone()),
            key_source: v1_source + 1,
        });
    }
    (issuer_strings, key_sources)
}

/// The v1 and v2 `iss` values of one Entra tenant.
pub fn entra_issuer_pair(tenant: &str) -> [String; 2] {
    [
        format!("{ENTRA_V1_ISSUER_HOST}/{tenant}/"),
        format!("{ENTRA_LOGIN}/{tenant}/v2.0"),
    ]
}

/// Rules whose conditions no token of their issuers can meet: an audience none of those
/// issuers accepts, or tenants none of them admits.
fn unmatchable_rules(rules: &[CompiledRule], issuers: &[IssuerConfig]) -> Vec<String> {
    let mut warnings = Vec::new();
    for rule in rules {
        let applicable: Vec<&IssuerConfig> = issuers
            .iter()
            .filter(|issuer| rule.issuers.is_empty() || rule.issuers.contains(&issuer.name))
            .collect();
        let audiences = &rule.when.audiences;
        if !audiences.is_empty()
            && !applicable.iter().any(|issuer| {
                issuer.audiences.iter().any(|accepted| {
                    audiences
                        .iter()
                        .any(|wanted| crate::model::claims::audience_equal(accepted, wanted))
                })
            })
        {
            warnings.push(format!(
                "rule {:?} can never match: none of its issuers accepts audiences {}",
                rule.name,
                audiences.join(", ")
            ));
        }
        let tenants = &rule.when.tenants;
        let admits = |issuer: &&IssuerConfig| match &issuer.tenants {
            TenantBinding::Any => true,
            TenantBinding::Listed(listed) => listed.iter().any(|t| tenants.contains(t)),
            TenantBinding::None => false,
        };
        if !tenants.is_empty() && !applicable.iter().any(admits) {
            warnings.push(format!(
                "rule {:?} can never match: none of its issuers admits tenants {}",
                rule.name,
                tenants.join(", ")
            ));
        }
    }
    warnings
}

/// Rules that trust more than the configuration shows:
/// - a rule for a multi-tenant issuer (`tenants: any`) must name the tenants it trusts or say
///   `tenants: any` itself (refused otherwise): any tenant's admin can assign `Quay.acme.admin`
///   on their copy of the app;
/// - a rule for a `github-actions` issuer that matches `repository_owner`/`repository` by name
///   without `repository_owner_id`/`repository_id` (warned): any repository on GitHub can mint
///   a token with any audience, and names are freed and reused when owners rename.
fn check_rule_trust(
    rules: &[raw::Rule],
    issuers: &[IssuerConfig],
    issues: &mut Issues<'_>,
    warnings: &mut Vec<String>,
) {
    for (index, rule) in rules.iter().enumerate() {
        // The names of the issuers this rule applies to that are of a kind.
        let applicable = |kind: fn(&IssuerConfig) -> bool| -> Vec<&str> {
            issuers
                .iter()
                .filter(|issuer| rule.issuers.is_empty() || rule.issuers.contains(&issuer.name))
                .filter(|issuer| kind(issuer))
                .map(|issuer| issuer.name.as_str())
                .collect()
        };
        let multi_tenant = applicable(|issuer| issuer.tenants == TenantBinding::Any);
        // Present at all: a list of ids or `any` (a wrong keyword is refused by the rule's
        // own compilation).
        if !multi_tenant.is_empty() && rule.when.tenants.is_none() {
            issues.push_near(
                format!("rules[{index}].when.tenants"),
                format!(
                    "rule {:?} applies to issuer {}, which accepts every Entra tenant \
                     (tenants: any): list the tenant ids this rule trusts in when.tenants, or \
                     write `tenants: any` in its when to trust every tenant's administrators{}",
                    rule.name,
                    multi_tenant.join(", "),
                    if rule.issuers.is_empty() {
                        " (a rule meant for other issuers names them in issuers)"
                    } else {
                        ""
                    }
                ),
            );
        }
        let github = applicable(|issuer| issuer.preset == Preset::GithubActions);
        let claims = &rule.when.claims;
        let pinned_by_id = ["repository_owner_id", "repository_id"]
            .iter()
            .filter_map(|name| claims.get(*name))
            .any(is_exact_match);
        let by_name: Vec<&str> = ["repository_owner", "repository"]
            .into_iter()
            .filter(|name| claims.contains_key(*name))
            .collect();
        if !github.is_empty() && !by_name.is_empty() && !pinned_by_id {
            warnings.push(format!(
                "rule {:?} matches GitHub Actions tokens of issuer {} by {} only: any \
                 repository on GitHub can mint a token with any audience, and a renamed owner's \
                 name can be taken by someone else; pin repository_owner_id or repository_id \
                 (exact values) as well",
                rule.name,
                github.join(", "),
                by_name.join(" and ")
            ));
        }
    }
}

/// A `when.claims` value that names exact values: scalars or a list of them, no glob.
fn is_exact_match(value: &serde_json::Value) -> bool {
    let exact = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => !text.contains('*'),
        serde_json::Value::Number(_) => true,
        _ => false,
    };
    match value {
        serde_json::Value::Array(items) => !items.is_empty() && items.iter().all(exact),
        other => exact(other),
    }
}

fn check_issuer_uniqueness(issuers: &[IssuerConfig], issues: &mut Issues<'_>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut strings: HashMap<&str, &str> = HashMap::new();
    let mut any_entra = 0;
    for (index, issuer) in issuers.iter().enumerate() {
        if names.insert(&issuer.name, index).is_some() {
            issues.push(
                format!("issuers[{index}].name"),
                format!("issuer name {:?} is used twice", issuer.name),
            );
        }
        if issuer.tenants == TenantBinding::Any {
            any_entra += 1;
        }
        for string in &issuer.issuer_strings {
            if let Some(other) = strings.insert(&string.iss, &issuer.name) {
                issues.push(
                    format!("issuers[{index}]"),
                    format!(
                        "issuer {:?} is also configured by {other:?}: one iss, one entry",
                        string.iss
                    ),
                );
            }
        }
    }
    if any_entra > 1 {
        issues.push("issuers", "only one entra issuer may use tenants: any");
    }
}

/// Best-effort line of a field path such as `issuers[1].audiences` in YAML text: walks the
/// path segment by segment through indentation. Returns None where the layout is unusual
/// (flow style, anchors); the field path alone still says where to look.
pub fn locate_field(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut end = lines.len();
    let mut min_indent = 0usize;
    let mut found = None;
    for segment in field.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let (line, indent) = find_key(&lines, start, end, min_indent, key)?;
        found = Some(line + 1);
        start = line + 1;
        end = block_end(&lines, start, indent);
        min_indent = indent + 1;
        if let Some(index) = index {
            let item = nth_list_item(&lines, start, end, index)?;
            found = Some(item.0 + 1);
            start = item.0;
            // The item ends where the next item (or anything as shallow) begins, so a field
            // missing from this item is not found in the next one.
            end = (item.0 + 1..end)
                .find(|&number| is_content(lines[number]) && indent_of(lines[number]) <= item.1)
                .unwrap_or(end);
            min_indent = item.1;
        }
    }
    found
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let trimmed = line.trim();
    !trimmed.is_empty() && !trimmed.starts_with('#')
}

fn find_key(
    lines: &[&str],
    start: usize,
    end: usize,
    min_indent: usize,
    key: &str,
) -> Option<(usize, usize)> {
    let wanted = format!("{key}:");
    (start..end).find_map(|number| {
        let line = lines[number];
        if !is_content(line) {
            return None;
        }
        let body = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - body.len();
        (indent >= min_indent && body.starts_with(&wanted)).then_some((number, indent))
    })
}

fn block_end(lines: &[&str], start: usize, parent_indent: usize) -> usize {
    (start..lines.len())
        .find(|&number| {
            is_content(lines[number])
                && indent_of(lines[number]) <= parent_indent
                && !lines[number].trim_start().starts_with("- ")
        })
        .unwrap_or(lines.len())
}

fn nth_list_item(lines: &[&str], start: usize, end: usize, index: usize) -> Option<(usize, usize)> {
    let mut item_indent = None;
    let mut seen = 0;
    for (number, line) in lines.iter().enumerate().take(end).skip(start) {
        if !is_content(line) || !line.trim_start().starts_with("- ") {
            continue;
        }
        let indent = indent_of(line);
        match item_indent {
            None => item_indent = Some(indent),
            Some(expected) if indent != expected => continue,
            Some(_) => {}
        }
        if seen == index {
            return Some((number, indent));
        }
        seen += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
quay:
  service: quay.example.com
  realm: https://quay.example.com/v2/auth
issuers:
  - name: entra
    preset: entra
    tenants: [11111111-2222-3333-4444-555555555555]
    audiences: [api://quay-api]
  - name: keycloak
    issuer: https://sso.example.com/realms/main
    audiences: [quay]
"#;

    fn errors(text: &str) -> String {
        match Config::parse(text, "test.yaml") {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn minimal_config_compiles_with_documented_defaults() {
        let config = Config::parse(MINIMAL, "t").expect("valid");
        assert_eq!(config.listen.grpc.port(), 9191);
        assert_eq!(config.listen.http.port(), 9090);
        assert_eq!(config.unauthenticated, Unauthenticated::Passthrough);
        assert_eq!(config.headers.prefix, "x-quay-authz-");
        assert_eq!(config.max_token_bytes, 16384);
        let entra = config.issuer("entra").expect("entra");
        let strings: Vec<&str> = entra
            .issuer_strings
            .iter()
            .map(|s| s.iss.as_str())
            .collect();
        assert_eq!(
            strings,
            [
                "https://sts.windows.net/11111111-2222-3333-4444-555555555555/",
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
            ]
        );
        assert_eq!(entra.algorithms, [SigningAlgorithm::RS256]);
        assert_eq!(entra.leeway_seconds, 60);
        assert_eq!(config.jwks.max_refresh_interval, Duration::from_secs(600));
        assert!(
            errors(&format!(
                "{MINIMAL}jwks: {{max_refresh_interval_seconds: 0}}\n"
            ))
            .contains("jwks.max_refresh_interval_seconds: must be positive")
        );
        assert!(entra.required);
        assert_eq!(
            entra.key_sources[1].location,
            KeyLocation::Discovery(
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration".into()
            )
        );
        let keycloak = config.issuer("keycloak").expect("keycloak");
        assert_eq!(
            keycloak.key_sources[0].location.url(),
            "https://sso.example.com/realms/main/.well-known/openid-configuration"
        );
    }

    #[test]
    fn unknown_field_names_path_and_line() {
        let text = MINIMAL.replace(
            "    audiences: [quay]",
            "    audiences: [quay]\n    audience: x",
        );
        let message = errors(&text);
        assert!(message.starts_with("test.yaml:"), "{message}");
        assert!(message.contains("issuers[1]"), "{message}");
        assert!(message.contains("unknown field `audience`"), "{message}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let text = MINIMAL
            .replace(
                "tenants: [11111111-2222-3333-4444-555555555555]",
                "tenants: [not-a-guid]",
            )
            .replace(
                "    audiences: [quay]",
                "    audiences: []\n    algorithms: [HS256]",
            );
        let message = errors(&text);
        assert!(
            message.contains("test.yaml:8: issuers[0].tenants: \"not-a-guid\" is not a tenant id"),
            "{message}"
        );
        assert!(
            message.contains("issuers[1].audiences: at least one audience"),
            "{message}"
        );
        assert!(
            message.contains("HMAC and 'none' are forbidden"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 3, "{message}");
    }

    #[test]
    fn http_urls_need_explicit_opt_in() {
        let text = MINIMAL.replace(
            "    audiences: [quay]",
            "    audiences: [quay]\n    jwks_uri: http://127.0.0.1:1/keys",
        );
        assert!(errors(&text).contains("issuers[1].jwks_uri: must be https"));
        let allowed = text.replace(
            "jwks_uri: http://127.0.0.1:1/keys",
            "jwks_uri: http://127.0.0.1:1/keys\n    allow_insecure_http: true",
        );
        let config = Config::parse(&allowed, "t").expect("valid");
        assert_eq!(
            config.issuer("keycloak").expect("keycloak").key_sources[0].location,
            KeyLocation::Jwks("http://127.0.0.1:1/keys".into())
        );
    }

    #[test]
    fn duplicate_issuers_and_bad_listen_rejected() {
        let text = format!(
            "listen:\n  grpc: nowhere\n  admin: 0.0.0.0:9192\n  grpc_tls: {{cert_file: /nonexistent/tls.crt, key_file: /nonexistent/tls.key}}\n{}",
            MINIMAL.replace("name: keycloak", "name: entra")
        );
        let message = errors(&text);
        assert!(
            message.contains("listen.grpc: expected host:port"),
            "{message}"
        );
        assert!(message.contains("listen.admin: the admin API"), "{message}");
        assert!(message.contains("listen.grpc_tls.cert_file"), "{message}");
        assert!(
            message.contains("issuer name \"entra\" is used twice"),
            "{message}"
        );
    }

    #[test]
    fn entra_any_is_a_warning_and_uses_common_keys() {
        let text = MINIMAL.replace(
            "tenants: [11111111-2222-3333-4444-555555555555]",
            "tenants: any",
        );
        let config = Config::parse(&text, "t").expect("valid");
        assert!(config.warnings[0].contains("ANY Entra tenant"));
        let entra = config.issuer("entra").expect("entra");
        assert_eq!(entra.tenants, TenantBinding::Any);
        assert!(entra.issuer_strings.is_empty());
        assert!(entra.key_sources[0].location.url().contains("/common/"));
    }

    #[test]
    fn warnings_for_unmatchable_rules_and_shadowed_grants() {
        let text = format!(
            "{MINIMAL}rules:\n  - name: wrong-aud\n    issuers: [keycloak]\n    when: {{audiences: [api://quay-api]}}\n    grant: [\"repo:read on acme/*\"]\n  - name: wrong-tenant\n    when: {{tenants: [99999999-2222-3333-4444-555555555555]}}\n    grant: [\"repo:read on acme/*\"]\n  - name: shadow\n    grant: [\"repo:write on acme/*\", \"repo:read on acme/app\"]\n"
        );
        let config = Config::parse(&text, "t").expect("valid");
        let warnings = config.warnings.join("\n");
        assert!(
            warnings.contains(
                "rule \"wrong-aud\" can never match: none of its issuers accepts audiences"
            ),
            "{warnings}"
        );
        assert!(
            warnings.contains(
                "rule \"wrong-tenant\" can never match: none of its issuers admits tenants"
            ),
            "{warnings}"
        );
        assert!(warnings.contains("rule \"shadow\": grant \"repo:read on acme/app\" is already covered by \"repo:write on acme/*\""), "{warnings}");
        assert_eq!(config.warnings.len(), 3, "{warnings}");
    }

    /// MINIMAL with its Entra entry multi-tenant, and `rules` appended.
    fn multi_tenant_with(rules: &str) -> String {
        format!(
            "{}rules:\n{rules}",
            MINIMAL.replace(
                "tenants: [11111111-2222-3333-4444-555555555555]",
                "tenants: any",
            )
        )
    }

    #[test]
    fn rules_for_a_multi_tenant_issuer_must_name_their_tenants() {
        // Any tenant's admin can assign Quay.acme.admin on their copy of the app.
        let message = errors(&multi_tenant_with(
            "  - name: ok\n    issuers: [keycloak]\n    grant: [\"repo:read on acme/*\"]\n  - name: team-roles\n    issuers: [entra]\n    grant_from_groups:\n      pattern: '^Quay\\.(?P<ns>[a-z]+)\\.admin$'\n      grant: [\"repo:admin on {ns}/*\"]\n  - name: everyone\n    when: {groups_any: [readers]}\n    grant: [\"repo:read on acme/*\"]\n",
        ));
        assert!(
            message.contains(
                "test.yaml:17: rules[1].when.tenants: rule \"team-roles\" applies to issuer entra, which accepts every Entra tenant (tenants: any)"
            ),
            "{message}"
        );
        // A rule for every issuer includes the multi-tenant one; its `when` line is named.
        assert!(
            message.contains("test.yaml:23: rules[2].when.tenants: rule \"everyone\""),
            "{message}"
        );
        assert_eq!(message.lines().count(), 2, "{message}");

        let named = multi_tenant_with(
            "  - name: home-tenant\n    issuers: [entra]\n    when: {tenants: [11111111-2222-3333-4444-555555555555]}\n    grant_from_groups:\n      pattern: '^Quay\\.(?P<ns>[a-z]+)\\.admin$'\n      grant: [\"repo:admin on {ns}/*\"]\n  - name: any-tenant-reader\n    issuers: [entra]\n    when: {tenants: any, groups_any: [Quay.Reader]}\n    grant: [\"repo:read on public/*\"]\n",
        );
        let config = Config::parse(&named, "t").expect("tenants named or any: valid");
        assert!(config.rules[1].when.any_tenant);
        assert_eq!(
            config.rules[0].when.tenants,
            ["11111111-2222-3333-4444-555555555555"]
        );
        let warning = config.warnings.join("\n");
        assert!(
            warning.contains("each rule for this issuer must name the tenants it trusts"),
            "{warning}"
        );
        assert!(!warning.contains("make sure audiences"), "{warning}");

        let bad_word = errors(&multi_tenant_with(
            "  - name: r\n    issuers: [entra]\n    when: {tenants: all}\n    grant: [\"repo:read on acme/*\"]\n",
        ));
        assert!(
            bad_word
                .contains("rules[0].when.tenants: expected a list of tenant ids or the word any"),
            "{bad_word}"
        );
        let typo = errors(&multi_tenant_with(
            "  - name: r\n    issuers: [entra]\n    when: {tenants: [11111111-2222-3333-4444]}\n    grant: [\"repo:read on acme/*\"]\n",
        ));
        assert!(
            typo.contains("rules[0].when.tenants: \"11111111-2222-3333-4444\" is not a tenant id"),
            "{typo}"
        );
    }

    #[test]
    fn unconditional_super_user_is_refused_for_any_issuer() {
        let message = errors(&format!(
            "{MINIMAL}rules:\n  - name: admins\n    issuers: [keycloak]\n    grant: [\"super:user\"]\n"
        ));
        assert!(
            message.contains(
                "test.yaml:16: rules[0].grant: rule \"admins\" grants super:user to every valid token of issuer keycloak"
            ),
            "{message}"
        );
        let tenants_any_is_no_condition = errors(&multi_tenant_with(
            "  - name: admins\n    issuers: [entra]\n    when: {tenants: any}\n    grant: [\"super:user\"]\n",
        ));
        assert!(
            tenants_any_is_no_condition.contains("grants super:user to every valid token"),
            "{tenants_any_is_no_condition}"
        );
        let narrowed = format!(
            "{MINIMAL}rules:\n  - name: admins\n    issuers: [keycloak]\n    when: {{groups_any: [quay-admins]}}\n    grant: [\"super:user\"]\n"
        );
        Config::parse(&narrowed, "t").expect("a group narrows it");
    }

    const GITHUB: &str =
        "  - name: github\n    preset: github-actions\n    audiences: [https://quay.example.com]\n";

    #[test]
    fn github_rules_matching_names_without_ids_are_warned() {
        let text = |claims: &str| {
            format!(
                "{MINIMAL}{GITHUB}rules:\n  - name: ci\n    issuers: [github]\n    when: {{claims: {{{claims}}}}}\n    grant: [\"repository:{{claims.repository}}:pull,push\"]\n"
            )
        };
        let warned = Config::parse(&text("repository_owner: acme, ref: refs/heads/main"), "t")
            .expect("valid");
        let warning = warned.warnings.join("\n");
        assert!(
            warning.contains("rule \"ci\" matches GitHub Actions tokens of issuer github by repository_owner only"),
            "{warning}"
        );
        assert!(
            warning.contains("pin repository_owner_id or repository_id"),
            "{warning}"
        );
        let by_repository = Config::parse(&text("repository: acme/app"), "t").expect("valid");
        assert!(
            by_repository
                .warnings
                .join("\n")
                .contains("by repository only"),
            "{:?}",
            by_repository.warnings
        );
        for pinned in [
            "repository_owner: acme, repository_owner_id: \"1234567\"",
            "repository: acme/app, repository_id: \"7654321\"",
        ] {
            let config = Config::parse(&text(pinned), "t").expect("valid");
            assert!(
                config.warnings.is_empty(),
                "{pinned}: {:?}",
                config.warnings
            );
        }
        // A glob is no pin.
        let glob = Config::parse(
            &text("repository_owner: acme, repository_owner_id: \"*\""),
            "t",
        )
        .expect("valid");
        assert!(!glob.warnings.is_empty());
    }

    /// `upstream` per issuer: forward by default, strip accepted, exchange refused until the
    /// identity bridge (`bridge:`) is configured to sign what Quay receives.
    #[test]
    fn upstream_modes_and_exchange_needs_the_bridge() {
        let with = |mode: &str| {
            format!(
                "{MINIMAL}  - name: extra\n    issuer: https://sso.example.com/x\n    audiences: [x]\n    upstream: {mode}\n"
            )
        };
        let config = Config::parse(&with("strip"), "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.issuers[2].upstream, raw::Upstream::Strip);
        assert_eq!(config.issuers[0].upstream, raw::Upstream::Forward);
        let message = errors(&with("exchange"));
        assert!(
            message.contains("issuers[2].upstream: exchange needs the identity bridge"),
            "{message}"
        );
        assert!(errors(&with("rewrite")).contains("upstream"));
    }

    #[test]
    fn every_preset_checks_its_urls() {
        for (preset, extra) in [
            (
                "github-actions",
                "issuer: http://ghes.example.com/_services/token",
            ),
            (
                "github-actions",
                "discovery: http://mirror.example.com/.well-known/openid-configuration",
            ),
            ("github-actions", "jwks_uri: http://mirror.example.com/keys"),
            (
                "entra\n    tenants: [11111111-2222-3333-4444-555555555555]",
                "jwks_uri: http://mirror.example.com/keys",
            ),
            (
                "entra\n    tenants: [11111111-2222-3333-4444-555555555555]",
                "discovery: http://mirror.example.com/d",
            ),
        ] {
            let field = extra.split(':').next().unwrap_or_default();
            let text = format!(
                "{MINIMAL}  - name: extra\n    preset: {preset}\n    audiences: [x]\n    {extra}\n"
            );
            let message = errors(&text);
            assert!(
                message.contains(&format!("issuers[2].{field}: must be https")),
                "{preset} {extra}: {message}"
            );
            let allowed = text.replace(
                &format!("    {extra}\n"),
                &format!("    {extra}\n    allow_insecure_http: true\n"),
            );
            let allowed = allowed.replace(
                "tenants: [11111111-2222-3333-4444-555555555555]\n    audiences: [x]",
                "tenants: [22222222-2222-3333-4444-555555555555]\n    audiences: [x]",
            );
            Config::parse(&allowed, "t").unwrap_or_else(|e| panic!("{preset} {extra}: {e}"));
        }
        let ftp = errors(&format!(
            "{MINIMAL}  - name: extra\n    preset: github-actions\n    audiences: [x]\n    issuer: ftp://ghes.example.com\n"
        ));
        assert!(
            ftp.contains("issuers[2].issuer: expected an https URL"),
            "{ftp}"
        );
    }

    #[test]
    fn audiences_compare_alike_in_tokens_rules_and_warnings() {
        // README: App ID URIs match with or without a trailing slash, everywhere.
        let text = format!(
            "{MINIMAL}rules:\n  - name: obo\n    issuers: [entra]\n    when: {{audiences: [api://quay-api/]}}\n    grant: [\"repo:read on acme/*\"]\n"
        );
        let config = Config::parse(&text, "t").expect("valid");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert!(crate::model::claims::audience_equal(
            "api://quay-api",
            "api://quay-api/"
        ));
        assert!(crate::model::claims::audience_equal(
            "api://quay-api/",
            "api://quay-api"
        ));
        assert!(!crate::model::claims::audience_equal("quay", "quay/"));
        assert!(!crate::model::claims::audience_equal(
            "api://quay-api",
            "api://quay-api//"
        ));
    }

    #[test]
    fn yaml_syntax_error_has_line() {
        let message = errors("quay: [unclosed\n");
        assert!(message.starts_with("test.yaml:"), "{message}");
    }

    #[test]
    fn locate_field_walks_indentation() {
        let text =
            "a: 1\nissuers:\n  - name: x\n    audiences: [a]\n  - name: y\n    audiences: []\n";
        assert_eq!(locate_field(text, "issuers"), Some(2));
        assert_eq!(locate_field(text, "issuers[1]"), Some(5));
        assert_eq!(locate_field(text, "issuers[1].audiences"), Some(6));
        assert_eq!(locate_field(text, "issuers[0].audiences"), Some(4));
        assert_eq!(locate_field(text, "issuers[2]"), None);
        // A field of the second item is not taken from the third.
        let text = "rules:\n  - name: a\n  - name: b\n    grant: []\n";
        assert_eq!(locate_field(text, "rules[0].grant"), None);
        assert_eq!(locate_field(text, "rules[1].grant"), Some(4));
    }
}
