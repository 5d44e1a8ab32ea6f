//! The identity bridge: quay-authz as one of Quay's OIDC login providers. For an issuer with
//! `upstream: exchange`, Quay receives a short-lived JWT signed here instead of the caller's
//! token, built to pass Quay's SSO-JWT checks rule by rule (QUAY-INTEGRATION.md §2,
//! Quay's `oauth/oidc.py` and `auth/oauth.py`).
//!
//! Usage: `Bridge::new(&settings, metrics)` once per configuration (the `Pipeline` holds an
//! `Option<Bridge>`); per allowed request `bridge.token_for(&identity, issuer, now)`. The
//! discovery document and the JWKS come from `discovery()` and `jwks()`; `server` serves them.

pub mod keys;
pub mod template;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;

use crate::config::bridge::BridgeSettings;
use crate::config::{IssuerConfig, SigningAlgorithm};
use crate::jwks::VerificationKey;
use crate::metrics::Metrics;
use crate::model::decision::Reason;
use crate::model::identity::Identity;

/// Why no bridge token could be had. `reason` is the deny's stable code; `detail` names the
/// template or claim (never a value or a token) for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintError {
    pub reason: Reason,
    pub detail: String,
}

/// How the caller is named to Quay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub username: String,
    pub email: Option<String>,
}

struct Minted {
    token: Arc<str>,
    username: String,
    email: Option<String>,
    /// The key set it was signed with: a rotation mints again.
    generation: u64,
    /// Reused until here (80 % of its lifetime), then minted again.
    refresh_at: u64,
    expires_at: u64,
}

/// The signer and its mint cache for one configuration.
pub struct Bridge {
    settings: BridgeSettings,
    /// Per (source issuer, `sub`): the bridge token last minted for that principal.
    cache: DashMap<String, Minted>,
    metrics: Metrics,
    /// The mint-cache counters, resolved once: a label lookup per Check would cost more than
    /// the cache hit itself.
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
    /// The public halves of the signing keys as verification keys, for exchanged tokens
    /// coming back on a Check; rebuilt when the key set's generation changes.
    verifying: arc_swap::ArcSwapOption<(u64, Vec<Arc<VerificationKey>>)>,
}

impl Bridge {
    pub fn new(settings: &BridgeSettings, metrics: Metrics) -> Self {
        Self {
            settings: settings.clone(),
            cache: DashMap::new(),
            hits: metrics.bridge_mint_cache.with_label_values(&["hit"]),
            misses: metrics.bridge_mint_cache.with_label_values(&["miss"]),
            metrics,
            verifying: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn settings(&self) -> &BridgeSettings {
        &self.settings
    }

    /// How `identity` is named in bridge tokens, from its issuer's templates.
    pub fn principal(identity: &Identity, issuer: &IssuerConfig) -> Result<Principal, MintError> {
        let templates = templates(issuer)?;
        Ok(Principal {
            subject: render(&templates.subject, identity, issuer)?,
            username: render(&templates.username, identity, issuer)?,
            email: match &templates.email {
                Some(email) => Some(render(email, identity, issuer)?),
                None => None,
            },
        })
    }

    /// The bridge token Quay receives for `identity` (minted or reused from the mint cache).
    pub fn token_for(
        &self,
        identity: &Identity,
        issuer: &IssuerConfig,
        now: u64,
    ) -> Result<Arc<str>, Reason> {
        self.token_for_detailed(identity, issuer, &[], now)
            .map_err(|error| error.reason)
    }

    /// [`Bridge::token_for`] with the detail of a failure, for the audit log; `rules` (those
    /// that granted the request) go into the mint's audit event.
    pub fn token_for_detailed(
        &self,
        identity: &Identity,
        issuer: &IssuerConfig,
        rules: &[String],
        now: u64,
    ) -> Result<Arc<str>, MintError> {
        // The pipeline rendered the username into the identity when it verified the token
        // (cached with it); what is left per Check is the subject, the cache key.
        let templates = templates(issuer)?;
        let principal = Principal {
            subject: render(&templates.subject, identity, issuer)?,
            username: if template::valid_username(&identity.username) {
                identity.username.clone()
            } else {
                render(&templates.username, identity, issuer)?
            },
            email: match &templates.email {
                Some(email) => Some(render(email, identity, issuer)?),
                None => None,
            },
        };
        let keys = self.settings.keys.current();
        let key = format!("{}\n{}", issuer.name, principal.subject);
        if let Some(entry) = self.cache.get(&key)
            && entry.generation == keys.generation
            && now < entry.refresh_at
            && entry.username == principal.username
            && entry.email == principal.email
        {
            self.hits.inc();
            return Ok(entry.token.clone());
        }
        self.misses.inc();
        let minted = self.mint(identity, issuer, &principal, &keys, rules, now)?;
        let token = minted.token.clone();
        self.remember(key, minted, now);
        Ok(token)
    }

    /// Signs one bridge token (QUAY-INTEGRATION.md §2, rule by rule).
    fn mint(
        &self,
        identity: &Identity,
        issuer: &IssuerConfig,
        principal: &Principal,
        keys: &keys::KeySet,
        rules: &[String],
        now: u64,
    ) -> Result<Minted, MintError> {
        let signing = keys.signing();
        let expires_at = now + self.settings.token_lifetime_seconds;
        let jti = new_jti()?;
        let claims = self.claims(identity, principal, &jti, now, expires_at);
        let token = sign(signing, claims)?;
        self.metrics
            .bridge_mints
            .with_label_values(&[&issuer.name])
            .inc();
        // One audit event per mint; never the token.
        tracing::info!(
            target: "audit",
            event = "bridge_mint",
            subject = %principal.subject,
            username = %principal.username,
            issuer = %issuer.name,
            source_subject = identity.claims.get("sub").and_then(|sub| sub.as_str()).unwrap_or(""),
            audience = %self.settings.audience,
            jti = %jti,
            kid = %signing.kid,
            exp = expires_at,
            rule = %rules.join(","),
        );
        Ok(Minted {
            token,
            username: principal.username.clone(),
            email: principal.email.clone(),
            generation: keys.generation,
            refresh_at: now + self.settings.token_lifetime_seconds * 8 / 10,
            expires_at,
        })
    }

    /// Signs a token for the token-exchange endpoint (README, "Token exchange"): a bridge
    /// token like those minted for Quay inline (same header, keys and claims, so Quay accepts
    /// it as it accepts them), valid `lifetime_seconds`, plus `scope` (the granted scopes,
    /// RFC 8693 §2.2.1 / RFC 9068 §2.2.3 style) and the private claim `quay_authz`: the
    /// source issuer and the source token's claims, so each Check re-runs today's policy for
    /// the holder (who had the source token: nothing new is disclosed). Never cached: every
    /// exchange is a new token with its own `jti`.
    pub fn mint_exchanged(
        &self,
        identity: &Identity,
        issuer: &IssuerConfig,
        scope: &str,
        lifetime_seconds: u64,
        now: u64,
    ) -> Result<ExchangedMint, MintError> {
        let principal = Bridge::principal(identity, issuer)?;
        let keys = self.settings.keys.current();
        let expires_at = now + lifetime_seconds;
        let jti = new_jti()?;
        let mut claims = self.claims(identity, &principal, &jti, now, expires_at);
        if let Some(object) = claims.as_object_mut() {
            object.insert("scope".into(), scope.into());
            object.insert(
                EXCHANGE_CLAIM.into(),
                serde_json::json!({"issuer": issuer.name, "claims": identity.claims}),
            );
        }
        let token = sign(keys.signing(), claims)?;
        Ok(ExchangedMint {
            token,
            jti,
            principal,
            issued_at: now,
            expires_at,
        })
    }

    /// The claims of a bridge token (QUAY-INTEGRATION.md §2).
    fn claims(
        &self,
        identity: &Identity,
        principal: &Principal,
        jti: &str,
        now: u64,
        expires_at: u64,
    ) -> serde_json::Value {
        let mut claims = serde_json::json!({
            // `iss` must be in OIDC_ISSUERS / equal the discovered issuer; `aud` in
            // OIDC_AUDIENCES ∪ {CLIENT_ID}; `azp`, when OIDC_ALLOWED_CLIENTS is set, in it.
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "azp": self.settings.audience,
            // Quay finds its user by (login service, sub) and names a new one after
            // `preferred_username` (cut at `@`, which the grammar check excludes).
            "sub": principal.subject,
            "preferred_username": principal.username,
            // `iat` and `exp` are required; `nbf` is ignored by Quay but set for other readers.
            "iat": now,
            "nbf": now,
            "exp": expires_at,
            "jti": jti,
            // Never `impersonated`: Quay refuses such a token.
        });
        if let (Some(email), Some(object)) = (&principal.email, claims.as_object_mut()) {
            // Quay takes the email only when `email_verified` is true: claim it only when the
            // caller's own IdP did.
            let verified =
                identity.claims.get("email_verified") == Some(&serde_json::Value::Bool(true));
            object.insert("email".into(), email.clone().into());
            object.insert("email_verified".into(), verified.into());
        }
        claims
    }

    /// Keeps `minted` for reuse. Bounded: when full, expired entries go; if none has, the new
    /// token is simply not remembered (the next request mints again).
    fn remember(&self, key: String, minted: Minted, now: u64) {
        let capacity = self.settings.mint_cache_entries;
        if capacity == 0 {
            return;
        }
        if self.cache.len() >= capacity && !self.cache.contains_key(&key) {
            self.cache.retain(|_, entry| entry.expires_at > now);
            if self.cache.len() >= capacity {
                return;
            }
        }
        self.cache.insert(key, minted);
    }

    /// Entries in the mint cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// OpenID Connect Discovery 1.0 §3, with what Quay's `OIDCLoginService` reads: `issuer`
    /// (must equal the tokens' `iss`), `jwks_uri` (its key cache), `scopes_supported` (login
    /// scopes), `authorization_endpoint` (the "Sign in with …" button of Quay's login page). Nobody
    /// signs in to Quay's UI through the bridge: Quay only verifies the tokens it is handed. The
    /// authorization endpoint (required by §3) is there so that button leads to a page saying so
    /// ([`Bridge::AUTHORIZE_ANSWER`]) instead of a Quay error; there is no token or userinfo
    /// endpoint.
    pub fn discovery(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.settings.issuer,
            "jwks_uri": self.settings.jwks_uri,
            "authorization_endpoint": self.settings.authorization_endpoint,
            "scopes_supported": ["openid"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": [
                "iss", "aud", "azp", "sub", "preferred_username", "email", "email_verified",
                "iat", "nbf", "exp", "jti"
            ],
        })
    }

    /// What the authorization endpoint answers (400), to a person who pressed quay-authz's
    /// button on Quay's login page.
    pub const AUTHORIZE_ANSWER: &'static str = "quay-authz is not an interactive login provider: it \
        vouches for callers that reach Quay through Envoy with a token of a trusted identity \
        provider (GitHub Actions, Entra ID, ...). Sign in to Quay with another provider.\n";

    /// Every configured key (RFC 7517 §5), so tokens signed before a rotation still verify.
    pub fn jwks(&self) -> serde_json::Value {
        self.settings.keys.current().jwks()
    }

    /// The key that verifies an exchanged token signed here, by `kid` (RS256 only: what
    /// [`sign`] uses). Every configured key verifies, so a token signed before a rotation
    /// keeps working until it expires. The keys are the published JWKS, read by the same
    /// parser as an IdP's (`jwks::parse_jwks`).
    pub fn verification_key(&self, kid: Option<&str>) -> Option<Arc<VerificationKey>> {
        let kid = kid?;
        let keys = self.settings.keys.current();
        let cached = self.verifying.load_full();
        let verifying = match cached {
            Some(cached) if cached.0 == keys.generation => cached,
            _ => {
                let parsed =
                    crate::jwks::parse_jwks(keys.jwks().to_string().as_bytes(), usize::MAX)
                        .unwrap_or_default();
                let built = Arc::new((keys.generation, parsed));
                self.verifying.store(Some(built.clone()));
                built
            }
        };
        verifying
            .1
            .iter()
            .find(|key| key.key_id.as_deref() == Some(kid) && key.fits(SigningAlgorithm::RS256))
            .cloned()
    }

    /// Re-reads the key files (see `keys::SigningKeys::refresh`).
    pub fn refresh_keys(&self) -> Result<bool, keys::KeyError> {
        self.settings.keys.refresh()
    }
}

fn templates(issuer: &IssuerConfig) -> Result<&crate::config::bridge::BridgeIdentity, MintError> {
    issuer.bridge_identity.as_ref().ok_or_else(|| MintError {
        reason: Reason::BridgeIdentityInvalid,
        detail: format!("issuer {} has no bridge identity", issuer.name),
    })
}

fn render(
    template: &template::Template,
    identity: &Identity,
    issuer: &IssuerConfig,
) -> Result<String, MintError> {
    template
        .render(&identity.claims)
        .map_err(|error| MintError {
            reason: Reason::BridgeIdentityInvalid,
            detail: format!("issuer {}: {error}", issuer.name),
        })
}

/// The private claim of an exchanged token that names its source (see
/// [`Bridge::mint_exchanged`]); an inline bridge token never has it.
pub const EXCHANGE_CLAIM: &str = "quay_authz";

/// A token signed by [`Bridge::mint_exchanged`], with what the lifecycle records of it.
pub struct ExchangedMint {
    pub token: Arc<str>,
    pub jti: String,
    pub principal: Principal,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl std::fmt::Debug for ExchangedMint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ExchangedMint")
            .field("jti", &self.jti)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// A fresh `jti`: 128 random bits, base64url.
fn new_jti() -> Result<String, MintError> {
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| unavailable("no randomness for a jti"))?;
    Ok(URL_SAFE_NO_PAD.encode(jti))
}

/// The compact JWS of `claims`, signed with `signing`.
fn sign(signing: &keys::SigningKey, claims: serde_json::Value) -> Result<Arc<str>, MintError> {
    // Quay treats a bearer as a JWT only when `typ` is JWT or at+jwt, requires a `kid` it
    // finds in the discovered JWKS, and accepts RS256 or RS384.
    let header = serde_json::json!({"alg": "RS256", "kid": signing.kid, "typ": "JWT"});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signing
        .sign(signing_input.as_bytes())
        .map_err(|_| unavailable("signing failed"))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)).into())
}

fn unavailable(detail: &str) -> MintError {
    MintError {
        reason: Reason::KeysUnavailable,
        detail: detail.to_string(),
    }
}
