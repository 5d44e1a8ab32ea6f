//! `quay-authz check-config FILE`: validate a configuration and print what it means (exit 2
//! with `file:line: field: what is wrong` on error); with `--quay-config`, print the Quay
//! `config.yaml` fragment that pairs with it (README, "Identity bridge").

use std::path::Path;
use std::process::ExitCode;

use quay_authz::config::raw::{Preset, Upstream};
use quay_authz::config::{Config, IssuerConfig, TenantBinding};
use quay_authz::policy::CompiledRule;
use serde_yaml::{Mapping, Value};

pub fn run(file: &Path, quay_config: bool) -> ExitCode {
    match Config::load(file) {
        Ok(config) if quay_config => match quay_fragment(&config, bridge_names(&config).as_ref()) {
            Ok(fragment) => {
                print!("{fragment}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                ExitCode::from(2)
            }
        },
        Ok(config) => {
            print!("{}", summarize(&config));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

fn summarize(config: &Config) -> String {
    let mut text = format!("{}: OK\n", config.origin);
    text.push_str(&format!(
        "listen: grpc {}, http {}, admin {}\nquay: service {}, realm {}\n\
         unauthenticated: {:?}\nheaders: prefix {}, remove_authorization {}\n\
         paths: non_api {:?}\n",
        config.listen.grpc,
        config.listen.http,
        config.listen.admin,
        config.quay.service,
        config.quay.realm,
        config.unauthenticated,
        config.headers.prefix,
        config.headers.remove_authorization,
        config.non_api,
    ));
    let jwks = &config.jwks;
    text.push_str(&format!(
        "limits: max_token_bytes {}, token_cache_entries {}, token_cache_bytes {}\n\
         jwks: ttl {}s (clamped to {}s..{}s), min_refetch_interval {}s, max_refresh_interval {}s, \
         fetch_timeout {}s, \
         max_response_bytes {}, max_keys {}, stale_limit {}s\n\
         audit: allow_sample_rate {}\nshutdown_grace_seconds: {}\n",
        config.max_token_bytes,
        config.token_cache_entries,
        config.token_cache_bytes,
        jwks.default_ttl.as_secs(),
        jwks.min_ttl.as_secs(),
        jwks.max_ttl.as_secs(),
        jwks.min_refetch_interval.as_secs(),
        jwks.max_refresh_interval.as_secs(),
        jwks.fetch_timeout.as_secs(),
        jwks.max_response_bytes,
        jwks.max_keys,
        jwks.stale_limit.as_secs(),
        config.audit.allow_sample_rate,
        config.shutdown_grace.as_secs(),
    ));
    if !config.overrides.is_empty() {
        text.push_str("environment overrides:\n");
        for applied in &config.overrides {
            text.push_str(&format!(
                "  {} = {} (from {})\n",
                applied.field, applied.value, applied.variable
            ));
        }
    }
    text.push_str("issuers:\n");
    for issuer in &config.issuers {
        text.push_str(&format!(
            "  - {} ({:?}), audiences: {}, algorithms: {}\n",
            issuer.name,
            issuer.preset,
            issuer.audiences.join(", "),
            issuer.algorithm_names()
        ));
        text.push_str(&format!(
            "      upstream: {}\n",
            upstream_summary(issuer.upstream)
        ));
        for string in &issuer.issuer_strings {
            text.push_str(&format!("      iss {}\n", string.iss));
        }
        for source in &issuer.key_sources {
            text.push_str(&format!("      keys from {}\n", source.location.url()));
        }
    }
    text.push_str("rules:\n");
    for rule in &config.rules {
        let issuers = if rule.issuers.is_empty() {
            "all issuers".to_string()
        } else {
            rule.issuers.join(", ")
        };
        let grants: Vec<&str> = rule
            .grants
            .iter()
            .chain(rule.from_groups.iter().flat_map(|g| g.grants.iter()))
            .map(|g| g.text.as_str())
            .collect();
        text.push_str(&format!(
            "  - {} ({issuers}): {}\n",
            rule.name,
            grants.join("; ")
        ));
    }
    for warning in &config.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text
}

/// What Quay receives from an allowed request of an issuer in this mode (README, "Identity
/// bridge").
fn upstream_summary(upstream: Upstream) -> &'static str {
    match upstream {
        Upstream::Forward => "forward (Quay receives the caller's token, unchanged)",
        Upstream::Exchange => "exchange (Quay receives a bridge token quay-authz signs)",
        Upstream::Strip => "strip (Quay receives no Authorization: it answers as anonymous)",
    }
}

// === --quay-config: the Quay side of each issuer's `upstream` ===

/// The two `bridge:` settings Quay's login provider for quay-authz is built from.
#[derive(Debug, Clone, PartialEq)]
struct BridgeNames {
    /// `bridge.issuer`: the `iss` of bridge tokens and the base of their discovery document.
    issuer: String,
    /// `bridge.audience`: their `aud`, Quay's `CLIENT_ID` for this provider.
    audience: String,
}

/// `bridge.issuer` and `bridge.audience` of the configuration in force (environment overrides
/// included, as `serve` would run it), or `None` without a `bridge:` section.
fn bridge_names(config: &Config) -> Option<BridgeNames> {
    config.bridge.as_ref().map(|bridge| BridgeNames {
        issuer: bridge.issuer.clone(),
        audience: bridge.audience.clone(),
    })
}

/// Quay's config key for a login provider named `name`: upper case, `_` for anything Quay's
/// key would not carry. Quay's `oauth/loginmanager.py` treats `GITHUB_` and `GOOGLE_` as its
/// own OAuth services, `RHSSO_` as Red Hat SSO and refuses `LDAP_`, `JWT_` and `KEYSTONE_`:
/// those names get an `_OIDC` suffix so the key is a plain OIDC login provider.
fn login_config_key(name: &str) -> String {
    let mut prefix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if ["GITHUB", "GOOGLE", "RHSSO", "LDAP", "JWT", "KEYSTONE"].contains(&prefix.as_str()) {
        prefix.push_str("_OIDC");
    }
    format!("{prefix}_LOGIN_CONFIG")
}

/// `url` with one trailing slash: Quay joins `.well-known/openid-configuration` onto
/// `OIDC_SERVER` as a relative URL, which would drop a last path segment without it
/// (`…/v2.0` → `…/.well-known/…`).
fn with_trailing_slash(url: &str) -> String {
    format!("{}/", url.trim_end_matches('/'))
}

fn strings(values: impl IntoIterator<Item = impl Into<String>>) -> Value {
    Value::Sequence(
        values
            .into_iter()
            .map(|value| Value::String(value.into()))
            .collect(),
    )
}

/// One `<NAME>_LOGIN_CONFIG` block with its comment lines, as YAML text.
fn provider_block(comments: &[String], key: &str, fields: Mapping) -> String {
    let mut block = Mapping::new();
    block.insert(Value::String(key.to_string()), Value::Mapping(fields));
    let yaml = serde_yaml::to_string(&block).unwrap_or_default();
    let mut text: String = comments.iter().map(|line| format!("# {line}\n")).collect();
    text.push_str(&yaml);
    text.push('\n');
    text
}

fn insert(fields: &mut Mapping, key: &str, value: Value) {
    fields.insert(Value::String(key.to_string()), value);
}

/// The login provider Quay needs to verify a `forward` issuer's tokens itself
/// (QUAY-INTEGRATION.md §2), or only a comment when Quay cannot.
fn forward_provider(issuer: &IssuerConfig, rules: &[CompiledRule]) -> String {
    let heading = format!(
        "issuer {} (upstream: forward): Quay verifies the caller's token itself.",
        issuer.name
    );
    if issuer.tenants == TenantBinding::Any {
        return format!(
            "# {heading}\n# Not possible for `tenants: any`: Quay accepts issuers it lists one by one \
             (OIDC_ISSUERS). Use `upstream: exchange` for this issuer.\n\n"
        );
    }
    let issuers: Vec<&str> = issuer
        .issuer_strings
        .iter()
        .map(|string| string.iss.as_str())
        .fold(Vec::new(), |mut seen, iss| {
            if !seen.contains(&iss) {
                seen.push(iss);
            }
            seen
        });
    // Entra serves discovery for its v2 issuer; a v1 token's `iss` is accepted by listing it.
    let server = issuers
        .iter()
        .find(|iss| iss.ends_with("/v2.0"))
        .or(issuers.first())
        .copied()
        .unwrap_or_default();
    let mut comments = vec![
        heading,
        "The key's prefix, lower-cased, is Quay's login service id: Quay keys users by \
         (service id, sub), so never rename it."
            .to_string(),
    ];
    let mut fields = Mapping::new();
    insert(
        &mut fields,
        "SERVICE_NAME",
        Value::String(issuer.name.clone()),
    );
    insert(
        &mut fields,
        "OIDC_SERVER",
        Value::String(with_trailing_slash(server)),
    );
    insert(
        &mut fields,
        "OIDC_ISSUERS",
        strings(issuers.iter().copied()),
    );
    if let Some(client_id) = issuer.audiences.first() {
        insert(&mut fields, "CLIENT_ID", Value::String(client_id.clone()));
    }
    if issuer.audiences.len() > 1 {
        insert(
            &mut fields,
            "OIDC_AUDIENCES",
            strings(issuer.audiences.iter().cloned()),
        );
    }
    insert(
        &mut fields,
        "CLIENT_SECRET",
        Value::String("REPLACE-for-Quay-browser-login-only".to_string()),
    );
    // Quay checks `azp` against this list (v1 Entra tokens carry `appid` and skip it). Only
    // when every rule for this issuer names its clients is the list the whole truth.
    let applicable: Vec<&CompiledRule> = rules
        .iter()
        .filter(|rule| rule.issuers.is_empty() || rule.issuers.contains(&issuer.name))
        .collect();
    if !applicable.is_empty() && applicable.iter().all(|rule| !rule.when.clients.is_empty()) {
        let mut clients: Vec<String> = applicable
            .iter()
            .flat_map(|rule| rule.when.clients.iter().cloned())
            .collect();
        clients.sort();
        clients.dedup();
        insert(&mut fields, "OIDC_ALLOWED_CLIENTS", strings(clients));
    }
    if let Some(claim) = issuer.username_claims.first() {
        insert(
            &mut fields,
            "PREFERRED_USERNAME_CLAIM_NAME",
            Value::String(claim.clone()),
        );
    }
    insert(&mut fields, "LOGIN_SCOPES", strings(["openid"]));
    if server.starts_with("http://") {
        comments.push("DEBUGGING: Quay fetches plain-http discovery only with it.".to_string());
        insert(&mut fields, "DEBUGGING", Value::Bool(true));
    }
    if issuer.preset == Preset::GithubActions {
        comments.push(
            "GitHub Actions tokens carry no username claim Quay can use (Quay would name the \
             user from `sub`): prefer `upstream: exchange`."
                .to_string(),
        );
    }
    comments
        .push("Needs Quay >= 3.18 (OIDC_ISSUERS, OIDC_AUDIENCES, OIDC_ALLOWED_CLIENTS).".into());
    provider_block(&comments, &login_config_key(&issuer.name), fields)
}

/// The one login provider for quay-authz's identity bridge, shared by every `exchange` issuer.
fn bridge_provider(bridge: &BridgeNames, issuers: &[&str]) -> String {
    let mut comments = vec![
        format!(
            "issuers {} (upstream: exchange): Quay receives a bridge token quay-authz signs; \
             this provider trusts it.",
            issuers.join(", ")
        ),
        "Quay fetches OIDC_SERVER/.well-known/openid-configuration and its jwks_uri from \
         quay-authz's HTTP port; Quay must reach it."
            .to_string(),
        "Quay asks its providers in config order, fetching each one's discovery until one \
         matches: while this one is unreachable, providers sorted after it fail too."
            .to_string(),
        "CLIENT_SECRET is never used: quay-authz runs no browser login.".to_string(),
    ];
    let mut fields = Mapping::new();
    insert(
        &mut fields,
        "SERVICE_NAME",
        Value::String("quay-authz".to_string()),
    );
    insert(
        &mut fields,
        "OIDC_SERVER",
        Value::String(with_trailing_slash(&bridge.issuer)),
    );
    insert(
        &mut fields,
        "OIDC_ISSUERS",
        strings([bridge.issuer.trim_end_matches('/').to_string()]),
    );
    insert(
        &mut fields,
        "CLIENT_ID",
        Value::String(bridge.audience.clone()),
    );
    insert(
        &mut fields,
        "CLIENT_SECRET",
        Value::String("unused".to_string()),
    );
    insert(
        &mut fields,
        "PREFERRED_USERNAME_CLAIM_NAME",
        Value::String("preferred_username".to_string()),
    );
    insert(&mut fields, "LOGIN_SCOPES", strings(["openid"]));
    if bridge.issuer.starts_with("http://") {
        comments.push(
            "DEBUGGING: Quay fetches plain-http discovery only with it (tests, never production)."
                .to_string(),
        );
        insert(&mut fields, "DEBUGGING", Value::Bool(true));
    }
    provider_block(&comments, "QUAYAUTHZ_LOGIN_CONFIG", fields)
}

/// The Quay `config.yaml` fragment for `config`: per issuer what Quay must trust for what it
/// receives (`forward`: the IdP; `exchange`: the bridge; `strip`: nothing).
fn quay_fragment(config: &Config, bridge: Option<&BridgeNames>) -> Result<String, String> {
    let mut text = format!(
        "# Quay config.yaml fragment for {} (quay-authz check-config --quay-config).\n\
         # Merge it into Quay's config.yaml. With FEATURE_USER_CREATION (Quay's default) Quay \
         creates\n# a user the first time it sees a (login provider, sub).\n\n",
        config.origin
    );
    let mut exchanged = Vec::new();
    for issuer in &config.issuers {
        match issuer.upstream {
            Upstream::Forward => text.push_str(&forward_provider(issuer, &config.rules)),
            Upstream::Strip => text.push_str(&format!(
                "# issuer {} (upstream: strip): Quay receives no Authorization and answers as \
                 anonymous; nothing to configure.\n\n",
                issuer.name
            )),
            Upstream::Exchange => exchanged.push(issuer.name.as_str()),
        }
    }
    if !exchanged.is_empty() {
        let bridge = bridge.ok_or_else(|| {
            format!(
                "issuers {} use `upstream: exchange`, which needs a `bridge:` section",
                exchanged.join(", ")
            )
        })?;
        text.push_str(&bridge_provider(bridge, &exchanged));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "t").unwrap_or_else(|error| panic!("{error}"))
    }

    const TWO_ISSUERS: &str = r#"
quay: {service: q, realm: "https://q/v2/auth"}
issuers:
  - name: github
    preset: github-actions
    audiences: [https://quay.example.com]
  - name: partner
    issuer: http://127.0.0.1:9000
    audiences: [quay]
    allow_insecure_http: true
"#;

    fn bridge() -> BridgeNames {
        BridgeNames {
            issuer: "https://quay-authz.example.com".to_string(),
            audience: "quay-authz".to_string(),
        }
    }

    /// Every `exchange` issuer shares one provider: the bridge's issuer (discovery at
    /// `OIDC_SERVER`, `iss` listed so Quay need not fetch discovery to match it) and audience.
    #[test]
    fn exchange_issuers_share_one_bridge_provider() {
        let mut config = config(TWO_ISSUERS);
        for issuer in &mut config.issuers {
            issuer.upstream = Upstream::Exchange;
        }
        let text = quay_fragment(&config, Some(&bridge())).expect("a fragment");
        let fragment: Value = serde_yaml::from_str(&text).expect("YAML");
        let provider = &fragment["QUAYAUTHZ_LOGIN_CONFIG"];
        assert_eq!(
            provider["OIDC_SERVER"].as_str(),
            Some("https://quay-authz.example.com/")
        );
        assert_eq!(
            provider["OIDC_ISSUERS"][0].as_str(),
            Some("https://quay-authz.example.com")
        );
        assert_eq!(provider["CLIENT_ID"].as_str(), Some("quay-authz"));
        assert_eq!(
            provider["PREFERRED_USERNAME_CLAIM_NAME"].as_str(),
            Some("preferred_username")
        );
        assert!(provider.get("DEBUGGING").is_none());
        assert_eq!(fragment.as_mapping().map(Mapping::len), Some(1), "{text}");
        assert!(
            text.contains("issuers github, partner (upstream: exchange)"),
            "{text}"
        );
    }

    #[test]
    fn exchange_without_a_bridge_is_an_error() {
        let mut config = config(TWO_ISSUERS);
        config.issuers[1].upstream = Upstream::Exchange;
        let error = quay_fragment(&config, None).expect_err("no bridge");
        assert!(
            error.contains("issuers partner use `upstream: exchange`"),
            "{error}"
        );
    }

    /// A forward provider: GitHub's name would make Quay build its GitHub OAuth service, so the
    /// key changes; plain-http discovery needs DEBUGGING; no rule names clients, so no list.
    #[test]
    fn forward_providers_get_a_plain_oidc_key_and_debugging_only_for_http() {
        let text = quay_fragment(&config(TWO_ISSUERS), None).expect("a fragment");
        let fragment: Value = serde_yaml::from_str(&text).expect("YAML");
        let github = &fragment["GITHUB_OIDC_LOGIN_CONFIG"];
        assert_eq!(
            github["OIDC_SERVER"].as_str(),
            Some("https://token.actions.githubusercontent.com/")
        );
        assert!(github.get("DEBUGGING").is_none());
        assert!(github.get("OIDC_ALLOWED_CLIENTS").is_none());
        assert!(text.contains("prefer `upstream: exchange`"), "{text}");
        let partner = &fragment["PARTNER_LOGIN_CONFIG"];
        assert_eq!(partner["DEBUGGING"].as_bool(), Some(true));
        assert_eq!(
            partner["OIDC_SERVER"].as_str(),
            Some("http://127.0.0.1:9000/")
        );
    }

    #[test]
    fn login_config_keys_avoid_quays_reserved_prefixes() {
        assert_eq!(login_config_key("entra-prod"), "ENTRA_PROD_LOGIN_CONFIG");
        for reserved in ["github", "Google", "rhsso", "ldap", "jwt", "keystone"] {
            assert!(
                login_config_key(reserved).ends_with("_OIDC_LOGIN_CONFIG"),
                "{reserved}"
            );
        }
    }
}
