//! The HTTP client of discovery and JWKS fetches: the configured CA bundle and proxy, the
//! timeouts, and the redirect policy (same scheme, host and port only).

use crate::config::{FetchProxy, JwksSettings};

/// Adds the configured CA bundle and proxy to the HTTP client of discovery and JWKS fetches.
/// The bundle extends the system's roots; the proxy choice is explicit (`FetchProxy`), so the
/// environment's proxy variables apply only when the configuration says so.
pub fn configure_fetch_client(
    mut builder: reqwest::ClientBuilder,
    settings: &JwksSettings,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    if !settings.ca_certificates.is_empty() {
        let roots = settings
            .ca_certificates
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.tls_certs_merge(roots);
    }
    Ok(match &settings.proxy {
        FetchProxy::Environment => builder,
        FetchProxy::Direct => builder.no_proxy(),
        FetchProxy::Explicit { url, no_proxy } => {
            let proxy = reqwest::Proxy::all(url.clone())?
                .no_proxy(reqwest::NoProxy::from_string(&no_proxy.join(",")));
            builder.proxy(proxy)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "quay:\n  service: quay.example.com\n  realm: https://quay.example.com/v2/auth\nissuers:\n  - name: dev\n    issuer: https://sso.example.com\n    audiences: [quay]\n";

    fn proxy_of(jwks: &str) -> Result<FetchProxy, String> {
        Config::parse(&format!("jwks:\n{jwks}{BASE}"), "t.yaml")
            .map(|config| config.jwks.proxy)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn proxy_settings_are_explicit() {
        assert_eq!(proxy_of("  max_keys: 10\n"), Ok(FetchProxy::Environment));
        assert_eq!(
            proxy_of("  proxy_from_environment: false\n"),
            Ok(FetchProxy::Direct)
        );
        assert_eq!(
            proxy_of(
                "  proxy: http://user:secret@proxy.example.com:3128\n  no_proxy: [sso.example.com]\n"
            ),
            Ok(FetchProxy::Explicit {
                url: "http://user:secret@proxy.example.com:3128".into(),
                no_proxy: vec!["sso.example.com".into()],
            })
        );
        let both =
            proxy_of("  proxy: http://proxy.example.com:3128\n  proxy_from_environment: true\n")
                .expect_err("both proxies");
        assert!(
            both.contains(
                "t.yaml:3: jwks.proxy_from_environment: cannot be true together with jwks.proxy"
            ),
            "{both}"
        );
        let stray = proxy_of("  no_proxy: [sso.example.com]\n").expect_err("no_proxy alone");
        assert!(
            stray.contains("t.yaml:2: jwks.no_proxy: applies only with jwks.proxy"),
            "{stray}"
        );
        let bad = proxy_of("  proxy: ftp://user:secret@proxy\n").expect_err("ftp proxy");
        assert!(
            bad.contains("t.yaml:2: jwks.proxy: expected a proxy URL"),
            "{bad}"
        );
        assert!(
            !bad.contains("secret"),
            "proxy credentials in an error: {bad}"
        );
        let debug = format!(
            "{:?}",
            proxy_of("  proxy: http://user:secret@proxy.example.com:3128\n")
        );
        assert!(!debug.contains("secret"), "{debug}");
    }
}
