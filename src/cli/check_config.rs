//! `quay-authz check-config FILE`: validate a configuration and print what it means (exit 2
//! with `file:line: field: what is wrong` on error).

use std::path::Path;
use std::process::ExitCode;

use quay_authz::config::Config;

pub fn run(file: &Path) -> ExitCode {
    match Config::load(file) {
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
        "limits: max_token_bytes {}, token_cache_entries {}\n\
         jwks: ttl {}s (clamped to {}s..{}s), min_refetch_interval {}s, max_refresh_interval {}s, \
         fetch_timeout {}s, \
         max_response_bytes {}, max_keys {}, stale_limit {}s\n\
         audit: allow_sample_rate {}\nshutdown_grace_seconds: {}\n",
        config.max_token_bytes,
        config.token_cache_entries,
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
            issuer
                .algorithms
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
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
