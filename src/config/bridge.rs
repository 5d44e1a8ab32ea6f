//! The `bridge:` section and the per-issuer `subject`/`username`/`email` templates, compiled.

use std::path::PathBuf;
use std::sync::Arc;

use super::{IssuerConfig, Issues, raw};
use crate::bridge::keys::{KeySet, SigningKeys};
use crate::bridge::template::{Template, TemplateKind};

/// The identity bridge, validated; its keys were read and checked at load.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// `iss` of bridge tokens, exactly as configured (Quay compares it as a string).
    pub issuer: String,
    pub audience: String,
    pub token_lifetime_seconds: u64,
    pub mint_cache_entries: usize,
    /// `{issuer path}/.well-known/openid-configuration` on the HTTP listener.
    pub discovery_path: String,
    /// `{issuer path}/.well-known/jwks.json` on the HTTP listener.
    pub jwks_path: String,
    /// The JWKS URL Quay is told to fetch.
    pub jwks_uri: String,
    /// `{issuer path}/authorize`: answers that nobody signs in here (see `Bridge::discovery`).
    pub authorize_path: String,
    pub authorization_endpoint: String,
    pub keys: Arc<SigningKeys>,
    /// `bridge.exchange`: the RFC 8693 endpoint; None: off.
    pub exchange: Option<ExchangeSettings>,
    /// `bridge.store`, read once at startup (a reload that changes it is logged as needing a
    /// restart: the live-token index and the revocation list must not be lost).
    pub store: StoreLocation,
}

/// `bridge.exchange`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSettings {
    /// Path of the endpoint on the HTTP listener.
    pub path: String,
    pub max_lifetime_seconds: u64,
    pub default_lifetime_seconds: u64,
    pub mints_per_principal_per_minute: u64,
}

/// Where exchanged tokens' shared state is kept (`bridge.store`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// In this process: right for one replica.
    Memory,
    /// A Redis server shared by every replica (`redis://`, `rediss://` for TLS).
    Redis(RedisLocation),
}

impl StoreLocation {
    /// What may be shown of it: the scheme and host, never a password.
    pub fn describe(&self) -> String {
        match self {
            Self::Memory => "memory".into(),
            Self::Redis(location) => location.describe().to_string(),
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A `redis://` or `rediss://` URL that the client crate's own parser accepted at load, so
/// opening the store later cannot fail on it. The URL may carry a password (from the file or
/// `QUAY_AUTHZ_BRIDGE_STORE`): only `describe()` is ever shown, in logs, `/readyz` and errors.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisLocation {
    url: String,
    shown: String,
}

impl RedisLocation {
    /// Parses `text` with the `redis` crate; the error says what is wrong without repeating
    /// the text (it may hold a password).
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected `memory` or `redis://[:PASSWORD@]HOST[:PORT][/DB]` \
                                (`rediss://` for TLS)";
        let scheme = match text.split_once("://") {
            Some(("redis", _)) => "redis",
            Some(("rediss", _)) => "rediss",
            _ => return Err(EXPECTED.into()),
        };
        let client = redis::Client::open(text).map_err(|error| {
            // The crate's message names the part that is wrong, never the value.
            format!("{EXPECTED}: not a usable Redis URL ({:?})", error.kind())
        })?;
        let info = client.get_connection_info();
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host, *port),
            redis::ConnectionAddr::TcpTls { host, port, .. } => (host, *port),
            _ => return Err(EXPECTED.into()),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let credentials = if info.redis_settings().password().is_some() {
            " (password set)"
        } else {
            ""
        };
        Ok(Self {
            url: text.to_string(),
            shown: format!(
                "{scheme}://{host}:{port}/{}{credentials}",
                info.redis_settings().db()
            ),
        })
    }

    /// The URL to connect to: for the store alone, never to be logged.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `redis://host:6379/0`, with ` (password set)` when there is one: what may be shown.
    pub fn describe(&self) -> &str {
        &self.shown
    }
}

impl std::fmt::Debug for RedisLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// How an `exchange` issuer's caller is named in the bridge token.
#[derive(Debug, Clone)]
pub struct BridgeIdentity {
    pub subject: Template,
    pub username: Template,
    pub email: Option<Template>,
}

const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
const JWKS: &str = "/.well-known/jwks.json";
const AUTHORIZE: &str = "/authorize";

pub(super) fn build_bridge(raw: &raw::Bridge, issues: &mut Issues<'_>) -> Option<BridgeSettings> {
    let before = issues.found.len();
    // RFC 8414 §3 / OIDC Discovery §4: the document lives at the issuer plus the well-known
    // suffix, so the issuer's path decides where it is served.
    let path = match raw
        .issuer
        .strip_prefix("https://")
        .or_else(|| raw.issuer.strip_prefix("http://"))
    {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(['?', '#', ' '])
                && !rest.contains("/.") =>
        {
            rest.find('/')
                .map(|index| rest[index..].trim_end_matches('/').to_string())
                .unwrap_or_default()
        }
        _ => {
            issues.push(
                "bridge.issuer",
                "expected an https:// URL (http:// only for a Quay run with DEBUGGING), without \
                 query or fragment",
            );
            String::new()
        }
    };
    if raw.audience.trim().is_empty() {
        issues.push(
            "bridge.audience",
            "must name the CLIENT_ID of Quay's login provider for quay-authz",
        );
    }
    if !(60..=3600).contains(&raw.token_lifetime_seconds) {
        issues.push(
            "bridge.token_lifetime_seconds",
            "must be between 60 and 3600 (Quay accepts SSO tokens of at most an hour here)",
        );
    }
    let paths: Vec<PathBuf> = raw.signing_keys.iter().map(PathBuf::from).collect();
    let keys = match KeySet::load(&paths) {
        Ok(keys) => Some(keys),
        Err(error) => {
            issues.push("bridge.signing_keys", error.to_string());
            None
        }
    };
    let exchange = raw
        .exchange
        .as_ref()
        .and_then(|exchange| build_exchange(exchange, issues));
    let store = build_store(&raw.store, issues);
    if issues.found.len() > before {
        return None;
    }
    let base = raw.issuer.trim_end_matches('/');
    Some(BridgeSettings {
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        token_lifetime_seconds: raw.token_lifetime_seconds,
        mint_cache_entries: raw.mint_cache_entries,
        discovery_path: format!("{path}{OPENID_CONFIGURATION}"),
        jwks_path: format!("{path}{JWKS}"),
        jwks_uri: format!("{base}{JWKS}"),
        authorize_path: format!("{path}{AUTHORIZE}"),
        authorization_endpoint: format!("{base}{AUTHORIZE}"),
        keys: Arc::new(SigningKeys::new(paths, keys?)),
        exchange,
        store: store?,
    })
}

fn build_exchange(raw: &raw::Exchange, issues: &mut Issues<'_>) -> Option<ExchangeSettings> {
    let before = issues.found.len();
    if !raw.path.starts_with('/')
        || raw.path.contains(['?', '#', ' ', '%'])
        || raw.path.contains("//")
        || raw.path.contains("/.")
    {
        issues.push(
            "bridge.exchange.path",
            "expected an absolute path such as /oauth2/token, without query, fragment, `//` or \
             dot segments",
        );
    }
    if !(60..=3600).contains(&raw.max_lifetime_seconds) {
        issues.push(
            "bridge.exchange.max_lifetime_seconds",
            "must be between 60 and 3600 (Quay accepts SSO tokens of at most an hour)",
        );
    }
    if raw.default_lifetime_seconds < 60 || raw.default_lifetime_seconds > raw.max_lifetime_seconds
    {
        issues.push(
            "bridge.exchange.default_lifetime_seconds",
            "must be at least 60 and at most max_lifetime_seconds",
        );
    }
    if raw.mints_per_principal_per_minute == 0 {
        issues.push(
            "bridge.exchange.mints_per_principal_per_minute",
            "must be at least 1 (remove `exchange` to turn the endpoint off)",
        );
    }
    (issues.found.len() == before).then(|| ExchangeSettings {
        path: raw.path.clone(),
        max_lifetime_seconds: raw.max_lifetime_seconds,
        default_lifetime_seconds: raw.default_lifetime_seconds,
        mints_per_principal_per_minute: raw.mints_per_principal_per_minute,
    })
}

fn build_store(text: &str, issues: &mut Issues<'_>) -> Option<StoreLocation> {
    if text == "memory" {
        return Some(StoreLocation::Memory);
    }
    // The value is not echoed: a mistyped URL may still carry a password.
    match RedisLocation::parse(text) {
        Ok(location) => Some(StoreLocation::Redis(location)),
        Err(message) => {
            issues.push("bridge.store", message);
            None
        }
    }
}

/// The templates of an `exchange` issuer (defaults per preset), or issues when they cannot
/// be compiled or are set on an issuer that does not exchange.
pub(super) fn build_bridge_identity(
    raw: &raw::Issuer,
    field: &str,
    bridge: bool,
    issues: &mut Issues<'_>,
) -> Option<BridgeIdentity> {
    if raw.upstream != raw::Upstream::Exchange {
        for (name, value) in [
            ("subject", &raw.subject),
            ("username", &raw.username),
            ("email", &raw.email),
        ] {
            if value.is_some() {
                issues.push(
                    format!("{field}.{name}"),
                    "only for `upstream: exchange` (it names the caller in bridge tokens)",
                );
            }
        }
        return None;
    }
    if !bridge {
        // The identity bridge signs the tokens `exchange` hands to Quay; without it there is
        // nothing to exchange for.
        issues.push(
            format!("{field}.upstream"),
            "exchange needs the identity bridge (a `bridge:` section), which is not configured; \
             use forward or strip",
        );
        return None;
    }
    let (subject, username) = match raw.preset {
        raw::Preset::Entra => ("entra:{claims.tid}:{claims.oid}", "{claims.oid}"),
        raw::Preset::GithubActions => (
            "github:{claims.repository_owner_id}:{claims.repository_id}",
            "gh-{claims.repository_owner_id}-{claims.repository_id}",
        ),
        raw::Preset::Oidc => ("oidc:{claims.sub}", "{claims.sub|slug}"),
    };
    let mut compile = |name: &str, text: &str, kind| match Template::parse(text, kind) {
        Ok(template) => Some(template),
        Err(message) => {
            issues.push(format!("{field}.{name}"), message);
            None
        }
    };
    let subject = compile(
        "subject",
        raw.subject.as_deref().unwrap_or(subject),
        TemplateKind::Subject,
    );
    let username = compile(
        "username",
        raw.username.as_deref().unwrap_or(username),
        TemplateKind::Username,
    );
    let email = match raw.email.as_deref() {
        Some(text) => Some(compile("email", text, TemplateKind::Email)?),
        None => None,
    };
    Some(BridgeIdentity {
        subject: subject?,
        username: username?,
        email,
    })
}

/// `bridge.issuer` is quay-authz's own: its tokens are exchanged tokens, verified with the
/// bridge's keys. A configured identity provider with the same `iss` would never be consulted,
/// so the configuration says so instead of shadowing it.
pub(super) fn check_own_issuer(
    bridge: Option<&BridgeSettings>,
    issuers: &[IssuerConfig],
    issues: &mut Issues<'_>,
) {
    let Some(bridge) = bridge else { return };
    for (index, issuer) in issuers.iter().enumerate() {
        if issuer
            .issuer_strings
            .iter()
            .any(|string| string.iss == bridge.issuer)
        {
            issues.push(
                format!("issuers[{index}]"),
                format!(
                    "issuer {:?} has the iss of bridge.issuer, quay-authz's own tokens: give the \
                     bridge an issuer URL of its own",
                    issuer.name
                ),
            );
        }
    }
}

/// All `exchange` issuers sign into one Quay login provider, where a user is its `sub`: two
/// issuers must never render the same one. Each subject's literal prefix must not be a prefix
/// of another's (values cannot spell a separator, `bridge::template`), so their subjects differ.
pub(super) fn check_subject_prefixes(issuers: &[IssuerConfig], issues: &mut Issues<'_>) {
    let exchanging: Vec<(usize, &IssuerConfig, &str)> = issuers
        .iter()
        .enumerate()
        .filter_map(|(index, issuer)| {
            let identity = issuer.bridge_identity.as_ref()?;
            Some((index, issuer, identity.subject.literal_prefix()))
        })
        .collect();
    for (position, (index, issuer, prefix)) in exchanging.iter().enumerate() {
        for (_, other, other_prefix) in &exchanging[..position] {
            if prefix.starts_with(other_prefix) || other_prefix.starts_with(prefix) {
                issues.push(
                    format!("issuers[{index}].subject"),
                    format!(
                        "issuers {:?} and {:?} could name the same Quay user: give each a \
                         `subject` that starts with its own literal prefix (`{}:…`)",
                        other.name, issuer.name, issuer.name
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreLocation;
    use crate::config::Config;

    fn key_file(dir: &std::path::Path) -> String {
        let path = dir.join("k.pem");
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_pem();
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }

    fn parse(bridge: &str, issuers: &str) -> Result<Config, String> {
        let text = format!(
            "quay: {{service: q.example.com, realm: \"https://q.example.com/v2/auth\"}}\n{bridge}issuers:\n{issuers}"
        );
        Config::parse(&text, "t.yaml").map_err(|e| e.to_string())
    }

    const GITHUB: &str =
        "  - {name: gh, preset: github-actions, audiences: [x], upstream: exchange}\n";
    const ENTRA: &str = "  - {name: en, preset: entra, tenants: [11111111-2222-3333-4444-555555555555], audiences: [x], upstream: exchange}\n";

    #[test]
    fn bridge_settings_and_preset_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!(
            "bridge: {{issuer: \"https://authz.example.com/oidc/\", audience: quay-authz, signing_keys: [{}]}}\n",
            key_file(dir.path())
        );
        let config = parse(&bridge, &format!("{GITHUB}{ENTRA}")).unwrap();
        let settings = config.bridge.as_ref().unwrap();
        assert_eq!(
            settings.discovery_path,
            "/oidc/.well-known/openid-configuration"
        );
        assert_eq!(settings.jwks_path, "/oidc/.well-known/jwks.json");
        assert_eq!(
            settings.jwks_uri,
            "https://authz.example.com/oidc/.well-known/jwks.json"
        );
        assert_eq!(settings.token_lifetime_seconds, 300);
        let identity = config.issuers[0].bridge_identity.as_ref().unwrap();
        assert_eq!(
            identity.subject.source(),
            "github:{claims.repository_owner_id}:{claims.repository_id}"
        );
        assert_eq!(
            config.issuers[1]
                .bridge_identity
                .as_ref()
                .unwrap()
                .subject
                .source(),
            "entra:{claims.tid}:{claims.oid}"
        );
    }

    #[test]
    fn a_redis_store_is_accepted_and_never_shows_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        let with_store = |store: &str| {
            format!(
                "bridge: {{issuer: \"https://x\", audience: a, signing_keys: [{key}], store: \"{store}\"}}\n"
            )
        };
        let config = parse(
            &with_store("redis://:s3cret-pw@redis.example.com:6380/2"),
            GITHUB,
        )
        .unwrap();
        let store = &config.bridge.as_ref().unwrap().store;
        let StoreLocation::Redis(location) = store else {
            panic!("{store:?}");
        };
        assert_eq!(
            location.url(),
            "redis://:s3cret-pw@redis.example.com:6380/2"
        );
        assert_eq!(
            store.describe(),
            "redis://redis.example.com:6380/2 (password set)"
        );
        assert!(!format!("{store:?} {config:?}").contains("s3cret-pw"));
        let tls = parse(&with_store("rediss://redis.example.com"), GITHUB).unwrap();
        assert_eq!(
            tls.bridge.as_ref().unwrap().store.describe(),
            "rediss://redis.example.com:6379/0"
        );

        // Refused with the field named and the value never repeated.
        for text in [
            "redis://:s3cret-pw@",
            "redis://:s3cret-pw@host:notaport/0",
            "redis://:s3cret-pw@host:6379/notadb",
            "http://:s3cret-pw@host:6379",
            "unix:///run/s3cret-pw.sock",
            "memroy",
        ] {
            let error = parse(&with_store(text), GITHUB).expect_err(text);
            assert!(error.contains("bridge.store"), "{text}: {error}");
            assert!(!error.contains("s3cret-pw"), "{text}: {error}");
        }
    }

    #[test]
    fn bridge_mistakes_are_refused_with_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        let cases = [
            (format!("bridge: {{issuer: \"ftp://x\", audience: a, signing_keys: [{key}]}}\n"), GITHUB.to_string(), "bridge.issuer"),
            (format!("bridge: {{issuer: \"https://x\", audience: \" \", signing_keys: [{key}]}}\n"), GITHUB.to_string(), "bridge.audience"),
            (format!("bridge: {{issuer: \"https://x\", audience: a, signing_keys: [{key}], token_lifetime_seconds: 7200}}\n"), GITHUB.to_string(), "bridge.token_lifetime_seconds"),
            ("bridge: {issuer: \"https://x\", audience: a, signing_keys: [/nonexistent.pem]}\n".to_string(), GITHUB.to_string(), "bridge.signing_keys"),
            ("bridge: {issuer: \"https://x\", audience: a, signing_keys: []}\n".to_string(), GITHUB.to_string(), "bridge.signing_keys"),
            // Templates only where tokens are exchanged.
            (format!("bridge: {{issuer: \"https://x\", audience: a, signing_keys: [{key}]}}\n"), "  - {name: gh, preset: github-actions, audiences: [x], subject: \"{claims.sub}\"}\n".to_string(), "issuers[0].subject"),
            // Two oidc exchange issuers with the default subject could name one Quay user.
            (format!("bridge: {{issuer: \"https://x\", audience: a, signing_keys: [{key}]}}\n"), "  - {name: a, issuer: \"https://a.example.com\", audiences: [x], upstream: exchange}\n  - {name: b, issuer: \"https://b.example.com\", audiences: [x], upstream: exchange}\n".to_string(), "issuers[1].subject"),
            (format!("bridge: {{issuer: \"https://x\", audience: a, signing_keys: [{key}]}}\n"), "  - {name: a, issuer: \"https://a.example.com\", audiences: [x], upstream: exchange, subject: \"a{claims.x}{claims.y}\"}\n".to_string(), "issuers[0].subject"),
            (format!("bridge: {{issuer: \"https://x\", audience: a, signing_keys: [{key}]}}\n"), "  - {name: a, issuer: \"https://a.example.com\", audiences: [x], upstream: exchange, username: \"{claims.x|upper}\"}\n".to_string(), "issuers[0].username"),
        ];
        for (bridge, issuers, field) in cases {
            let error = parse(&bridge, &issuers).expect_err(field);
            assert!(error.contains(field), "{field}: {error}");
        }
        // An identity provider with the bridge's own iss would be shadowed by it.
        let error = parse(
            &format!("bridge: {{issuer: \"https://authz.example.com\", audience: a, signing_keys: [{key}]}}\n"),
            "  - {name: a, issuer: \"https://authz.example.com\", audiences: [x]}\n",
        )
        .expect_err("own iss");
        assert!(
            error.contains("issuers[0]") && error.contains("bridge.issuer"),
            "{error}"
        );
        // Distinct literal prefixes make two oidc issuers fine.
        let bridge =
            format!("bridge: {{issuer: \"https://x\", audience: a, signing_keys: [{key}]}}\n");
        parse(&bridge, "  - {name: a, issuer: \"https://a.example.com\", audiences: [x], upstream: exchange, subject: \"a:{claims.sub}\"}\n  - {name: b, issuer: \"https://b.example.com\", audiences: [x], upstream: exchange, subject: \"b:{claims.sub}\"}\n").unwrap();
    }
}
