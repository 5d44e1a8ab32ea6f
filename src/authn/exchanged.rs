//! Exchanged tokens on a Check (README, "Token exchange"): a token of the bridge's own issuer,
//! handed out by the token-exchange endpoint, verified with the bridge's keys and turned back
//! into the identity it was issued to, so the policy can judge it with today's rules.

use std::sync::Arc;

use serde_json::Value;

use crate::authn::identify::{
    IdentifyError, IssuerMatch, ParsedToken, identity_from_claims, match_issuer, verify_signature,
};
use crate::bridge::{Bridge, EXCHANGE_CLAIM};
use crate::config::raw::Upstream;
use crate::config::{Config, SigningAlgorithm};
use crate::jwks::VerificationKey;
use crate::model::decision::Reason;
use crate::model::identity::{ExchangedToken, Identity};
use crate::model::permission::parse_scope_list;

/// The claims [`verify`] reads of an exchanged token (besides `iss`, always read): a Check
/// decodes them when the bridge is on (`identify::ClaimNames`).
pub const CLAIMS_READ: [&str; 9] = [
    "aud",
    "sub",
    "preferred_username",
    "jti",
    "iat",
    "exp",
    "nbf",
    "scope",
    EXCHANGE_CLAIM,
];

/// Why an exchanged token was refused, and the configured source issuer once it is known
/// (before that the caller names the bridge).
#[derive(Debug)]
pub struct ExchangedError {
    pub error: IdentifyError,
    pub issuer: Option<String>,
}

/// A token of our own issuer (README, "Token exchange"): signed with the bridge's keys, for
/// the bridge audience, unexpired (no leeway: we signed it, on this clock), carrying the
/// `quay_authz` claim — an inline bridge token, minted for Quay, is never a client
/// credential. The holder's identity is rebuilt from the source claims it embeds with the
/// source issuer's settings in force, which must still say `upstream: exchange`.
///
/// `on_issuer` hears which configured issuer the source is (`explain` narrates it). Returns the
/// identity, the key that verified the token and the token's `exp`.
pub fn verify(
    config: &Config,
    bridge: &Bridge,
    parsed: ParsedToken<'_>,
    now: u64,
    on_issuer: impl FnOnce(Option<&IssuerMatch<'_>>),
) -> Result<(Identity, Arc<VerificationKey>, u64), ExchangedError> {
    let fail = |reason: Reason, detail: &str| ExchangedError {
        error: IdentifyError::new(reason, format!("exchanged token: {detail}")),
        issuer: None,
    };
    if parsed.algorithm != "RS256" {
        return Err(fail(
            Reason::AlgorithmNotAllowed,
            "only RS256 is signed here",
        ));
    }
    let Some(key) = bridge.verification_key(parsed.key_id.as_deref()) else {
        return Err(fail(
            Reason::UnknownKey,
            "its kid is not one of the bridge's signing keys",
        ));
    };
    verify_signature(&parsed, &key, SigningAlgorithm::RS256)
        .map_err(|error| fail(error.reason, &error.detail))?;
    let mut claims = parsed.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("aud") != Some(bridge.settings().audience.as_str()) {
        return Err(fail(
            Reason::AudienceMismatch,
            "aud is not the bridge audience",
        ));
    }
    let (Some(subject), Some(username), Some(jti)) =
        (text("sub"), text("preferred_username"), text("jti"))
    else {
        return Err(fail(
            Reason::MissingClaim,
            "sub, preferred_username or jti missing",
        ));
    };
    let (subject, username, jti) = (subject.to_string(), username.to_string(), jti.to_string());
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let (Some(issued_at), Some(expires_at)) = (number("iat"), number("exp")) else {
        return Err(fail(Reason::MissingClaim, "iat or exp missing"));
    };
    if now >= expires_at {
        return Err(fail(
            Reason::TokenExpired,
            &format!("expired {} s ago", now - expires_at),
        ));
    }
    if number("nbf").unwrap_or(issued_at) > now {
        return Err(fail(Reason::TokenNotYetValid, "nbf is in the future"));
    }
    let scopes = match text("scope").map(parse_scope_list) {
        Some(Ok(scopes)) => scopes,
        Some(Err(_)) => return Err(fail(Reason::TokenMalformed, "scope does not parse")),
        None => Vec::new(),
    };
    let Some(Value::Object(mut source)) = claims.remove(EXCHANGE_CLAIM) else {
        return Err(fail(
            Reason::MissingClaim,
            "a bridge token minted for Quay is not a client credential (no quay_authz claim)",
        ));
    };
    let (Some(Value::String(source_issuer)), Some(Value::Object(source_claims))) =
        (source.remove("issuer"), source.remove("claims"))
    else {
        return Err(fail(
            Reason::TokenMalformed,
            "quay_authz has no issuer or claims",
        ));
    };
    let iss = source_claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let matched = match_issuer(config, &iss).filter(|matched| {
        matched.issuer.name == source_issuer && matched.issuer.upstream == Upstream::Exchange
    });
    on_issuer(matched.as_ref());
    let Some(matched) = matched else {
        return Err(fail(
            Reason::IssuerNotConfigured,
            &format!(
                "its source issuer {source_issuer:?} is no longer configured with upstream: exchange"
            ),
        ));
    };
    let mut identity =
        identity_from_claims(source_claims, matched, &iss, expires_at).map_err(|error| {
            ExchangedError {
                error,
                issuer: Some(matched.issuer.name.clone()),
            }
        })?;
    // Named as Quay sees the token itself: its `sub` and `preferred_username`.
    identity.username = username.into();
    identity.bridge_subject = Some(subject);
    identity.exchanged = Some(Arc::new(ExchangedToken {
        jti,
        issued_at,
        scopes,
    }));
    Ok((identity, key, expires_at))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;
    use crate::authn::identify::parse_token;
    use crate::metrics::Metrics;

    const NOW: u64 = 1_800_000_000;

    fn config(dir: &std::path::Path, upstream: &str) -> Config {
        let key = dir.join("bridge.pem");
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_pem();
        std::fs::write(&key, pem).unwrap();
        let text = format!(
            "quay: {{service: q.example.com, realm: \"https://q.example.com/v2/auth\"}}\n\
             bridge: {{issuer: \"https://authz.example.com/b\", audience: quay-authz, signing_keys: [{}], exchange: {{}}}}\n\
             issuers:\n  - {{name: gh, issuer: \"https://idp.example.com\", audiences: [quay], upstream: {upstream}, \
             subject: \"gh:{{claims.sub}}\", username: \"{{claims.sub|slug}}\"}}\n",
            key.display()
        );
        let text = if upstream == "exchange" {
            text
        } else {
            text.replace(
                ", subject: \"gh:{claims.sub}\", username: \"{claims.sub|slug}\"",
                "",
            )
        };
        Config::parse(&text, "t.yaml").unwrap()
    }

    /// A token of the bridge's issuer with `claims`, signed with its key.
    fn signed(bridge: &Bridge, claims: &Value) -> String {
        let keys = bridge.settings().keys.current();
        let header = json!({"alg": "RS256", "kid": keys.signing().kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = keys.signing().sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn claims() -> Value {
        json!({
            "iss": "https://authz.example.com/b", "aud": "quay-authz", "azp": "quay-authz",
            "sub": "gh:alice", "preferred_username": "alice", "iat": NOW - 10, "nbf": NOW - 10,
            "exp": NOW + 600, "jti": "j1", "scope": "repo:read on acme/app",
            "quay_authz": {"issuer": "gh", "claims": {
                "iss": "https://idp.example.com", "aud": "quay", "sub": "alice", "exp": NOW - 3600,
            }},
        })
    }

    fn outcome(config: &Config, claims: &Value) -> Result<Identity, String> {
        let bridge = Bridge::new(config.bridge.as_ref().unwrap(), Metrics::new());
        let token = signed(&bridge, claims);
        let parsed = parse_token(&token, 16_384).unwrap();
        verify(config, &bridge, parsed, NOW, |_| {})
            .map(|(identity, _, _)| identity)
            .map_err(|error| error.error.reason.code().to_string())
    }

    #[test]
    fn an_exchanged_token_rebuilds_its_holder_even_after_the_source_token_expired() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "exchange");
        let identity = outcome(&config, &claims()).unwrap();
        assert_eq!(&*identity.issuer, "gh");
        assert_eq!(&*identity.username, "alice");
        assert_eq!(identity.bridge_subject.as_deref(), Some("gh:alice"));
        assert_eq!(identity.expires_at, NOW + 600);
        let exchanged = identity.exchanged.unwrap();
        assert_eq!(
            (exchanged.jti.as_str(), exchanged.issued_at),
            ("j1", NOW - 10)
        );
        assert_eq!(
            exchanged.scopes,
            parse_scope_list("repo:read on acme/app").unwrap()
        );
    }

    /// An exchanged token embeds `Identity::embedded_claims` (only the claims the
    /// configuration reads, issue 14 item 2) and this module turns them back into the
    /// identity: the same identity comes back, and nothing unread is embedded.
    #[test]
    fn embedded_claims_rebuild_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "exchange");
        let source = json!({
            "iss": "https://idp.example.com", "aud": ["quay", "other"], "sub": "alice",
            "groups": ["a", "b"], "azp": "cli", "exp": NOW + 60, "iat": NOW, "nbf": NOW,
            "unread": "x".repeat(1000),
        });
        let Value::Object(source) = source else {
            unreachable!()
        };
        let matched = match_issuer(&config, "https://idp.example.com").unwrap();
        let identity =
            identity_from_claims(source, matched, "https://idp.example.com", NOW + 60).unwrap();
        assert_eq!(identity.claims.get("unread"), None);
        assert_eq!(identity.claims.get("exp"), None);
        let embedded = identity.embedded_claims();
        assert!(!embedded.contains_key("unread") && !embedded.contains_key("exp"));
        let rebuilt = identity_from_claims(embedded, matched, &identity.iss, NOW + 60).unwrap();
        assert_eq!(rebuilt, identity);
        assert_eq!(*rebuilt.groups, [Arc::from("a"), Arc::from("b")]);
        assert_eq!(rebuilt.client.as_deref(), Some("cli"));
    }

    /// A change to the claims of a valid exchanged token.
    type Edit = dyn Fn(&mut Value);

    #[test]
    fn every_flaw_of_an_exchanged_token_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "exchange");
        let with = |edit: &Edit| {
            let mut claims = claims();
            edit(&mut claims);
            outcome(&config, &claims).unwrap_err()
        };
        let cases: [(&Edit, &str); 8] = [
            (&|c| c["exp"] = json!(NOW), "token_expired"),
            (&|c| c["nbf"] = json!(NOW + 60), "token_not_yet_valid"),
            (&|c| c["aud"] = json!("quay"), "audience_mismatch"),
            (&|c| c["scope"] = json!("repo:read on"), "token_malformed"),
            (
                &|c| drop(c.as_object_mut().unwrap().remove("jti")),
                "missing_claim",
            ),
            // An inline bridge token: never a client credential.
            (
                &|c| drop(c.as_object_mut().unwrap().remove("quay_authz")),
                "missing_claim",
            ),
            (
                &|c| c["quay_authz"]["issuer"] = json!("other"),
                "issuer_not_configured",
            ),
            (
                &|c| c["quay_authz"]["claims"] = json!("x"),
                "token_malformed",
            ),
        ];
        for (index, (edit, reason)) in cases.into_iter().enumerate() {
            assert_eq!(with(edit), reason, "case {index}");
        }
        // The source issuer no longer exchanges.
        let forwarding = self::config(dir.path(), "forward");
        assert_eq!(
            outcome(&forwarding, &claims()).unwrap_err(),
            "issuer_not_configured"
        );
    }
}
