//! The decision pipeline for one Check, read as its phases in order:
//! extract → route → identify → authorize → respond.
//!
//! Usage: `Pipeline::new(config, &key_store)` once per configuration; per request
//! `pipeline.check(&check_request).await` (or `decide` for the bare decision).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prometheus::{Histogram, IntCounter};

use crate::authn::exchanged;
use crate::authn::extract::{Credential, RequestFacts};
use crate::authn::identify::{self, ClaimNames, IdentifyError, IssuerMatch, ParsedToken};
use crate::authn::token_cache::{Cached, Candidate, TokenCache, TokenDigest};
use crate::bridge::{Bridge, MintError};
use crate::check::audit::AllowSampler;
use crate::check::respond::{ResponseSettings, build_response, remove_also};
use crate::config::raw::Upstream;
use crate::config::{Config, NonApi, Unauthenticated};
use crate::jwks::{KeySource, KeyStore, VerificationKey};
use crate::metrics::Metrics;
use crate::model::clock::unix_now;
use crate::model::decision::{Decision, Reason, ScopeRewrite, UpstreamCredential};
use crate::model::identity::{ExchangedToken, Identity};
use crate::model::permission::{Granted, Permission, intersect_grants};
use crate::policy::{self, PolicyOutcome};
use crate::route::{RouteOutcome, RouteTable, registry_token};
use crate::store::TokenStore;

/// What the phases of one decision report as they run, in order. `explain` is an observer (it
/// turns the reports into its steps), so what it shows is the real run and never a second
/// implementation beside it; a Check passes [`Unobserved`], whose empty methods compile away.
pub trait PhaseObserver: Send {
    /// Phase 1: what the route table demands.
    fn route(&mut self, _outcome: &RouteOutcome) {}
    /// Phase 2: the credential the request carries.
    fn credential(&mut self, _credential: &Credential<'_>) {}
    /// Phase 3, from the verified-token cache: no parsing or verification ran.
    fn cached(&mut self) {}
    /// Phase 3: the token split and decoded (or why it could not be).
    fn token(&mut self, _parsed: Result<&ParsedToken<'_>, &IdentifyError>) {}
    /// Phase 3: the configured issuer the token's `iss` names, if any.
    fn issuer(&mut self, _matched: Option<&IssuerMatch<'_>>) {}
    /// Phase 3's result: the verified identity, or why there is none.
    fn identity(&mut self, _result: Result<&Identity, &IdentifyError>) {}
    /// Phase 4: what the rules granted.
    fn policy(&mut self, _outcome: &PolicyOutcome) {}
}

/// The observer of a Check: nobody is watching.
pub struct Unobserved;

impl PhaseObserver for Unobserved {}

/// One configuration, compiled and bound to its key sources.
pub struct Pipeline {
    pub config: Arc<Config>,
    routes: RouteTable,
    /// Per issuer (same order as `config.issuers`), per key source.
    key_sources: Vec<Vec<Arc<KeySource>>>,
    responses: ResponseSettings,
    /// Each admitted identity with what policy granted it, so a hit skips policy too. The
    /// cache is this configuration's: a reload builds a new Pipeline, and with it an empty
    /// cache, so a cached outcome is never one of an older policy.
    token_cache: TokenCache<Arc<PolicyOutcome>>,
    /// The distinct outcomes cached tokens hold, one copy each: the members of one group get
    /// the same grants, so 100 000 cached tokens usually share a handful of outcomes.
    shared_outcomes: SharedOutcomes,
    audit_sampler: AllowSampler,
    /// The decision counters and duration histograms `record` updates, resolved once.
    decision_metrics: DecisionMetrics,
    /// The identity bridge (`bridge:`), which signs what `exchange` issuers hand to Quay.
    bridge: Option<Bridge>,
    /// Token exchange's revocation list, consulted on every Check of an exchanged token
    /// (`Service.token_store`, kept across reloads; a private memory store by default).
    token_store: Arc<TokenStore>,
    /// The payload claims a Check decodes: what this configuration can read.
    decoded_claims: ClaimNames,
}

impl Pipeline {
    pub fn new(config: Arc<Config>, key_store: &KeyStore, metrics: Metrics) -> Self {
        let key_sources = key_store.bind(&config);
        let responses = ResponseSettings::new(
            config.headers.clone(),
            config.quay.realm.clone(),
            config.quay.service.clone(),
        );
        let exchanged_claims = match config.bridge {
            Some(_) => &exchanged::CLAIMS_READ[..],
            None => &[],
        };
        Self {
            decoded_claims: ClaimNames::read_by(&config, exchanged_claims.iter().copied()),
            routes: RouteTable::new(),
            key_sources,
            responses,
            token_cache: TokenCache::new(
                config.token_cache_entries,
                config.token_cache_bytes,
                metrics.clone(),
            ),
            shared_outcomes: SharedOutcomes::default(),
            audit_sampler: AllowSampler::new(config.audit.allow_sample_rate),
            decision_metrics: DecisionMetrics::new(&config, metrics.clone()),
            bridge: config
                .bridge
                .as_ref()
                .map(|settings| Bridge::new(settings, metrics.clone())),
            config,
            token_store: Arc::new(TokenStore::Memory(Default::default())),
        }
    }

    /// The token store the running service owns (`Service::new` and `Service::apply` pass
    /// it, so revocations outlive a reload); offline `explain` and the bench keep the private
    /// memory store `new` made.
    pub fn with_token_store(mut self, token_store: Arc<TokenStore>) -> Self {
        self.token_store = token_store;
        self
    }

    pub fn token_store(&self) -> &Arc<TokenStore> {
        &self.token_store
    }

    /// Verifies a token presented to the token-exchange endpoint (`exchange`) exactly as a
    /// Check verifies a bearer token (size limit, parse, issuer, keys, signature, claims,
    /// the bridge principal): one implementation for both.
    pub async fn identify_token(
        &self,
        token: &str,
        now: u64,
    ) -> Result<Arc<Identity>, IdentifyError> {
        self.identify(token, now, &mut Unobserved)
            .await
            .map(|(identity, _)| identity)
            .map_err(|(error, _)| error)
    }

    /// Ready when every `required` issuer has keys in every key source.
    pub fn ready(&self) -> bool {
        self.config
            .issuers
            .iter()
            .zip(&self.key_sources)
            .filter(|(issuer, _)| issuer.required)
            .all(|(_, sources)| sources.iter().all(|source| source.has_keys()))
    }

    pub fn key_sources(&self) -> impl Iterator<Item = (&str, &Arc<KeySource>)> {
        self.config
            .issuers
            .iter()
            .zip(&self.key_sources)
            .flat_map(|(issuer, sources)| {
                sources
                    .iter()
                    .map(move |source| (issuer.name.as_str(), source))
            })
    }

    /// The identity bridge, when configured (its discovery document and keys are served on the
    /// HTTP listener).
    pub fn bridge(&self) -> Option<&Bridge> {
        self.bridge.as_ref()
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    pub fn response_settings(&self) -> &ResponseSettings {
        &self.responses
    }

    /// Answers one Check, recording metrics and the audit event.
    pub async fn check(&self, request: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let facts = RequestFacts::from_check_request(request, &self.config.headers.prefix);
        let decision = self.decide(&facts, unix_now()).await;
        let mut response = build_response(&decision, &self.responses, facts.is_registry());
        // Other spellings of our identity headers (`x_quay_authz_user`) go too: Quay's WSGI
        // server reads them as the real ones.
        remove_also(&mut response, &facts.identity_header_spellings);
        let elapsed = started.elapsed();
        self.record(&facts, &decision, elapsed);
        response
    }

    /// The decision for one request at `now` (Unix seconds).
    pub async fn decide(&self, facts: &RequestFacts<'_>, now: u64) -> Decision {
        self.decide_observed(facts, now, &mut Unobserved).await
    }

    /// The decision, with every phase reporting to `observer` as it runs (`explain`).
    pub async fn decide_observed<O: PhaseObserver>(
        &self,
        facts: &RequestFacts<'_>,
        now: u64,
        observer: &mut O,
    ) -> Decision {
        // Phase 1 — route: what does this request need? Ambiguous paths stop here, before any
        // token work, whoever sends them.
        let route = self
            .routes
            .classify(&facts.method, &facts.path, facts.body.as_deref());
        observer.route(&route);
        let required = match &route {
            RouteOutcome::NotProtected => {
                return match self.config.non_api {
                    NonApi::Passthrough => Decision::Passthrough {
                        reason: Reason::NotProtected,
                    },
                    NonApi::Deny => deny(
                        Reason::RouteNotClassified,
                        "path is outside Quay's API and registry",
                        None,
                    ),
                };
            }
            RouteOutcome::Ambiguous(why) => return deny(Reason::PathAmbiguous, why, None),
            RouteOutcome::Unclassified => None,
            RouteOutcome::Requires(required) => Some(required.clone()),
            // Any valid identity; what it may do is cut into the scopes Quay receives.
            RouteOutcome::RegistryToken(_) => Some(Vec::new()),
        };
        let registry_scopes = match &route {
            RouteOutcome::RegistryToken(scopes) => Some(scopes),
            _ => None,
        };
        let challenge_scope = required.as_ref().and_then(|r| r.first().cloned());

        // Phase 2 — extract the credential. No bearer JWT from a configured issuer is Quay's
        // business (Basic, its own OAuth tokens) unless configured to deny.
        let credential = facts.credential();
        observer.credential(&credential);
        let token = match &credential {
            Credential::Bearer(token) => *token,
            // `docker login -p "$IDP_TOKEN"`: ours on the registry token endpoint only.
            Credential::BasicJwt(token) if registry_scopes.is_some() => token.as_str(),
            Credential::Multiple => {
                return deny(
                    Reason::MultipleCredentials,
                    "more than one credential in Authorization",
                    None,
                );
            }
            Credential::BasicJwt(_) | Credential::Other | Credential::None => {
                return self.unauthenticated(Reason::NoCredentials, challenge_scope);
            }
        };

        // Phase 3 — identify: parse, match the issuer, find the key, verify, check claims.
        let (identity, admission) = match self.identify(token, now, observer).await {
            Ok(identified) => identified,
            Err((error, issuer)) => {
                if issuer.is_none() && error.reason != Reason::TokenTooLarge {
                    // Not a JWT of ours (an opaque Quay token, another IdP): the
                    // unauthenticated policy decides.
                    return self.unauthenticated(error.reason, challenge_scope);
                }
                return Decision::Deny {
                    reason: error.reason,
                    detail: error.detail,
                    required: challenge_scope,
                    issuer,
                };
            }
        };

        // An exchanged token: the revocation list, on every Check (never cached).
        if let Some(exchanged) = &identity.exchanged
            && let Err(denied) = self.check_revocation(&identity, exchanged, now).await
        {
            return denied;
        }

        // Phase 4 — authorize: the policy's grants must cover every required permission.
        let Some(required) = required else {
            return Decision::Deny {
                reason: Reason::RouteNotClassified,
                detail: format!(
                    "{} {} is not a known Quay route",
                    facts.method,
                    facts.path_without_query()
                ),
                required: None,
                issuer: Some(identity.issuer.to_string()),
            };
        };
        let outcome = match admission {
            // Grants depend on the identity and the configuration alone, not on the route:
            // those computed when the token was admitted stand while this Pipeline does.
            Admission::Cached(outcome) => outcome,
            Admission::Verified(candidate) => {
                let outcome = Arc::new(policy::evaluate(&self.config.rules, &identity));
                for dropped in &outcome.dropped {
                    tracing::warn!(issuer = %identity.issuer, "{dropped}");
                }
                // Only a token some rule grants something is remembered: valid tokens that
                // grant nothing (any GitHub repository, any tenant of a multi-tenant app) must
                // not take the slots of those that do.
                match candidate {
                    Some(candidate) if !outcome.grants.is_empty() => {
                        // The shared copy serves this Check too: its rendering (`granted`) is
                        // made once for every token that holds it.
                        let (shared, bytes) = self.shared_outcomes.share(outcome);
                        self.token_cache
                            .admit(candidate, shared.clone(), bytes, now);
                        shared
                    }
                    _ => outcome,
                }
            }
        };
        observer.policy(&outcome);
        // An exchanged token gives only what both its `scope` and today's policy grant.
        let in_token_scope = |permission: &Permission| {
            identity.exchanged.as_ref().is_none_or(|exchanged| {
                exchanged
                    .scopes
                    .iter()
                    .any(|grant| grant.satisfies(permission))
            })
        };
        let authorized = outcome.authorize(&required).and_then(|rules| {
            match required
                .iter()
                .find(|permission| !in_token_scope(permission))
            {
                Some(missing) => Err(missing),
                None => Ok(rules),
            }
        });
        match authorized {
            Ok(rules) => {
                let rules: Vec<String> = rules.into_iter().map(str::to_string).collect();
                let mut upstream = match self.upstream_credential(&identity, token, &rules, now) {
                    Ok(upstream) => upstream,
                    // Fail closed: Quay never receives a request whose credential could not
                    // be made.
                    Err(error) => {
                        return Decision::Deny {
                            reason: error.reason,
                            detail: error.detail,
                            required: None,
                            issuer: Some(identity.issuer.to_string()),
                        };
                    }
                };
                let scopes = registry_scopes.map_or(ScopeRewrite::Unchanged, |scopes| {
                    // Quay's `/v2/auth` reads Basic only, and is given only what is granted.
                    // `remove_authorization` means Quay never sees the caller's token: not
                    // inside a Basic credential either.
                    upstream = match upstream.clone() {
                        UpstreamCredential::Forward if self.config.headers.remove_authorization => {
                            UpstreamCredential::Strip
                        }
                        other => other.for_registry_token(token),
                    };
                    let host = &self.config.quay.service;
                    let requests: Vec<_> = scopes
                        .iter()
                        .map(|scope| registry_token::parse_scope(scope, host))
                        .collect();
                    registry_token::downscope(&requests, |permission| {
                        in_token_scope(permission)
                            && outcome
                                .grants
                                .iter()
                                .any(|(grant, _)| grant.satisfies(permission))
                    })
                });
                let grants = match &identity.exchanged {
                    Some(exchanged) => Granted::new(intersect_grants(
                        Some(&exchanged.scopes),
                        &outcome.granted().grants,
                    )),
                    None => outcome.granted().clone(),
                };
                Decision::Allow {
                    upstream,
                    scopes,
                    required,
                    grants,
                    rules,
                    identity,
                }
            }
            Err(missing) => Decision::Deny {
                reason: Reason::InsufficientScope,
                detail: if identity.exchanged.is_some() && !in_token_scope(missing) {
                    format!("requires {missing}, outside the exchanged token's scope")
                } else {
                    format!("requires {missing}")
                },
                required: Some(missing.clone()),
                issuer: Some(identity.issuer.to_string()),
            },
        }
    }

    /// What Quay receives for an allowed request of `identity` (its issuer's `upstream`; an
    /// exchanged token is itself a bridge token, so Quay receives it as it is).
    fn upstream_credential(
        &self,
        identity: &Identity,
        token: &str,
        rules: &[String],
        now: u64,
    ) -> Result<UpstreamCredential, MintError> {
        if identity.exchanged.is_some() {
            return Ok(UpstreamCredential::Bearer(token.into()));
        }
        let Some(issuer) = self.config.issuer(&identity.issuer) else {
            return Ok(UpstreamCredential::Forward);
        };
        match issuer.upstream {
            Upstream::Forward => Ok(UpstreamCredential::Forward),
            Upstream::Strip => Ok(UpstreamCredential::Strip),
            Upstream::Exchange => match &self.bridge {
                Some(bridge) => bridge
                    .token_for_detailed(identity, issuer, rules, now)
                    .map(UpstreamCredential::Bearer),
                // The configuration refuses `exchange` without `bridge:`; should one get here,
                // Quay must not receive a token it does not trust.
                None => Ok(UpstreamCredential::Strip),
            },
        }
    }

    fn unauthenticated(&self, reason: Reason, required: Option<Permission>) -> Decision {
        match self.config.unauthenticated {
            Unauthenticated::Passthrough => Decision::Passthrough { reason },
            Unauthenticated::Deny => Decision::Deny {
                reason,
                detail: "a bearer token from a configured issuer is required".into(),
                required,
                issuer: None,
            },
        }
    }

    /// The identity, from the verified-token cache (with what policy granted it then) or
    /// verified now (with its cache `Candidate`, admitted once policy has granted it something).
    /// Errors carry the issuer name once the token is known to be one of ours: from then on a
    /// failure is always a deny.
    async fn identify<O: PhaseObserver>(
        &self,
        token: &str,
        now: u64,
        observer: &mut O,
    ) -> Result<(Arc<Identity>, Admission), (IdentifyError, Option<String>)> {
        let result = self.identify_unreported(token, now, observer).await;
        observer.identity(
            result
                .as_ref()
                .map(|(identity, _)| identity.as_ref())
                .map_err(|(error, _)| error),
        );
        result
    }

    async fn identify_unreported<O: PhaseObserver>(
        &self,
        token: &str,
        now: u64,
        observer: &mut O,
    ) -> Result<(Arc<Identity>, Admission), (IdentifyError, Option<String>)> {
        // The size limit comes first: an oversized token is refused unread, not even hashed
        // for the cache lookup.
        identify::check_size(token, self.config.max_token_bytes).map_err(|e| (e, None))?;
        let digest = self
            .token_cache
            .is_enabled()
            .then(|| TokenDigest::of(token));
        if let Some(digest) = &digest
            && let Some(Cached { identity, granted }) = self.token_cache.get(digest, now)
        {
            observer.cached();
            return Ok((identity, Admission::Cached(granted)));
        }
        let (identity, key, valid_until) = self.verify(token, now, observer).await?;
        let identity = Arc::new(identity);
        // An exchanged token is never cached: its revocation and the bridge keys are checked
        // on every Check.
        let Some(digest) = digest.filter(|_| identity.exchanged.is_none()) else {
            return Ok((identity, Admission::Verified(None)));
        };
        let candidate = Candidate::new(digest, identity.clone(), &key, valid_until);
        Ok((identity, Admission::Verified(Some(candidate))))
    }

    /// Full verification; also returns the key that verified the token and until when the
    /// token stays valid, for the verified-token cache.
    #[allow(clippy::type_complexity)]
    async fn verify<O: PhaseObserver>(
        &self,
        token: &str,
        now: u64,
        observer: &mut O,
    ) -> Result<(Identity, Arc<VerificationKey>, u64), (IdentifyError, Option<String>)> {
        let parsed =
            identify::parse_token_reading(token, self.config.max_token_bytes, &self.decoded_claims);
        observer.token(parsed.as_ref());
        let parsed = parsed.map_err(|e| (e, None))?;
        if let Some(bridge) = &self.bridge
            && parsed.iss == bridge.settings().issuer
        {
            return exchanged::verify(&self.config, bridge, parsed, now, |matched| {
                observer.issuer(matched)
            })
            .map_err(|error| {
                // Named after the bridge until the source issuer is known: always a deny.
                let issuer = error
                    .issuer
                    .unwrap_or_else(|| EXCHANGED_TOKEN_ISSUER.to_string());
                (error.error, Some(issuer))
            });
        }
        let matched = identify::match_issuer(&self.config, &parsed.iss);
        observer.issuer(matched.as_ref());
        let Some(matched) = matched else {
            return Err((
                IdentifyError::new(
                    Reason::IssuerNotConfigured,
                    "the token's issuer is not configured here",
                ),
                None,
            ));
        };
        let fail = |error: IdentifyError| (error, Some(matched.issuer.name.clone()));
        let algorithm =
            identify::allowed_algorithm(matched.issuer, &parsed.algorithm).map_err(fail)?;

        let Some(source) = self
            .key_sources
            .get(matched.issuer_index)
            .and_then(|sources| sources.get(matched.key_source))
        else {
            return Err(fail(IdentifyError::new(
                Reason::KeysUnavailable,
                "no key source",
            )));
        };
        let kid = parsed.key_id.as_deref();
        let mut key_set = source.current();
        let mut key = key_set
            .as_ref()
            .and_then(|set| set.find(kid, algorithm).cloned());
        if key.is_none() {
            // Unknown kid: perhaps the IdP rotated. One shared, rate-limited refetch.
            key_set = source
                .refresh_for_unknown_kid(key_set.as_ref().map(|set| set.generation))
                .await;
            key = key_set
                .as_ref()
                .and_then(|set| set.find(kid, algorithm).cloned());
        }
        let Some(key) = key else {
            return Err(fail(match key_set {
                None => IdentifyError::new(
                    Reason::KeysUnavailable,
                    format!(
                        "no keys for issuer {} yet (identity provider unreachable?)",
                        matched.issuer.name
                    ),
                ),
                Some(_) => IdentifyError::new(
                    Reason::UnknownKey,
                    "the token's signing key (kid) is not in the issuer's key set",
                ),
            }));
        };
        identify::verify_signature(&parsed, &key, algorithm).map_err(fail)?;
        let mut identity = identify::check_claims(
            parsed.claims,
            parsed.media_type.as_deref(),
            matched,
            &parsed.iss,
            now,
        )
        .map_err(fail)?;
        if matched.issuer.upstream == Upstream::Exchange {
            // The identity headers name the caller as Quay will see it: the bridge token's
            // username. Rendered once per verified token (the result is cached with it); a
            // caller the templates cannot name is refused here, before any grant.
            let principal = Bridge::principal(&identity, matched.issuer)
                .map_err(|error| fail(IdentifyError::new(error.reason, error.detail)))?;
            identity.username = principal.username.into();
            identity.bridge_subject = Some(principal.subject);
        }
        let valid_until = identity
            .expires_at
            .saturating_add(matched.issuer.leeway_seconds);
        Ok((identity, key, valid_until))
    }

    /// The revocation list for an exchanged token: consulted on every Check, never cached;
    /// a store that cannot answer fails closed.
    async fn check_revocation(
        &self,
        identity: &Identity,
        exchanged: &ExchangedToken,
        now: u64,
    ) -> Result<(), Decision> {
        let principal = identity.bridge_subject.as_deref().unwrap_or_default();
        let deny = |reason: Reason, detail: String| Decision::Deny {
            reason,
            detail,
            required: None,
            issuer: Some(identity.issuer.to_string()),
        };
        match self
            .token_store
            .is_revoked(&exchanged.jti, principal, exchanged.issued_at, now)
            .await
        {
            Ok(false) => Ok(()),
            Ok(true) => Err(deny(
                Reason::TokenRevoked,
                format!("exchanged token {} was revoked", exchanged.jti),
            )),
            Err(error) => Err(deny(error.reason(), error.to_string())),
        }
    }

    fn record(&self, facts: &RequestFacts<'_>, decision: &Decision, elapsed: std::time::Duration) {
        let issuer = match decision {
            Decision::Allow { identity, .. } => &identity.issuer,
            Decision::Deny {
                issuer: Some(issuer),
                ..
            } => issuer.as_str(),
            _ => "",
        };
        self.decision_metrics.count(decision, issuer);
        self.decision_metrics
            .duration(decision)
            .observe(elapsed.as_secs_f64());
        let latency_us = elapsed.as_micros() as u64;
        match decision {
            Decision::Allow {
                identity,
                rules,
                required,
                ..
            } if self.audit_sampler.keeps(&facts.request_id) => tracing::info!(
                target: "audit",
                decision = "allow",
                reason = "allowed",
                subject = %identity.username,
                issuer = %identity.issuer,
                tenant = identity.tenant.as_deref().unwrap_or(""),
                client = identity.client.as_deref().unwrap_or(""),
                method = %facts.method,
                path = %facts.path_without_query(),
                required = %DisplayList(required),
                rule = %rules.join(","),
                latency_us,
                request_id = %facts.request_id,
            ),
            Decision::Allow { .. } => {}
            Decision::Passthrough { reason } => tracing::debug!(
                target: "audit",
                decision = "passthrough",
                reason = reason.code(),
                method = %facts.method,
                path = %facts.path_without_query(),
                latency_us,
                request_id = %facts.request_id,
            ),
            Decision::Deny {
                reason,
                detail,
                required,
                issuer,
            } => tracing::info!(
                target: "audit",
                decision = "deny",
                reason = reason.code(),
                detail = %detail,
                issuer = issuer.as_deref().unwrap_or(""),
                required = %required.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                method = %facts.method,
                path = %facts.path_without_query(),
                latency_us,
                request_id = %facts.request_id,
            ),
        }
    }
}

/// The metric children `record` updates on every Check, looked up by label once and kept: one
/// decision counter per decision kind × reason × configured issuer (and no issuer), one
/// duration histogram per kind. Each is created on its first use, so `/metrics` shows only the
/// label sets that occurred, as before; an issuer name this configuration does not have (none
/// reaches `record` today) falls back to the label lookup.
struct DecisionMetrics {
    /// The configured issuers' names; a decision without an issuer takes the slot after them.
    issuers: Vec<String>,
    /// `[kind][reason][issuer]`, flattened.
    decisions: Box<[OnceLock<IntCounter>]>,
    durations: [OnceLock<Histogram>; 3],
    metrics: Metrics,
}

impl DecisionMetrics {
    const KINDS: [&'static str; 3] = ["allow", "passthrough", "deny"];

    fn new(config: &Config, metrics: Metrics) -> Self {
        let issuers: Vec<String> = config.issuers.iter().map(|i| i.name.clone()).collect();
        let slots = Self::KINDS.len() * Reason::ALL.len() * (issuers.len() + 1);
        Self {
            decisions: (0..slots).map(|_| OnceLock::new()).collect(),
            durations: Default::default(),
            issuers,
            metrics,
        }
    }

    fn kind_index(decision: &Decision) -> usize {
        match decision {
            Decision::Allow { .. } => 0,
            Decision::Passthrough { .. } => 1,
            Decision::Deny { .. } => 2,
        }
    }

    fn count(&self, decision: &Decision, issuer: &str) {
        let reason = decision.reason();
        let issuer_index = if issuer.is_empty() {
            Some(self.issuers.len())
        } else {
            self.issuers.iter().position(|name| name == issuer)
        };
        let reason_index = Reason::ALL.iter().position(|r| *r == reason);
        let labels = [decision.kind(), reason.code(), issuer];
        let (Some(issuer_index), Some(reason_index)) = (issuer_index, reason_index) else {
            self.metrics.decisions.with_label_values(&labels).inc();
            return;
        };
        let slot = (Self::kind_index(decision) * Reason::ALL.len() + reason_index)
            * (self.issuers.len() + 1)
            + issuer_index;
        self.decisions[slot]
            .get_or_init(|| self.metrics.decisions.with_label_values(&labels))
            .inc();
    }

    fn duration(&self, decision: &Decision) -> &Histogram {
        self.durations[Self::kind_index(decision)].get_or_init(|| {
            self.metrics
                .check_duration
                .with_label_values(&[decision.kind()])
        })
    }
}

/// Where an identity came from, and what that leaves for policy to do.
enum Admission {
    /// A cache hit: what policy granted the identity when it was admitted.
    Cached(Arc<PolicyOutcome>),
    /// Verified now: policy runs, and the cache takes the token if it grants something (and
    /// may hold it at all: an exchanged token comes without a `Candidate`).
    Verified(Option<Candidate>),
}

/// One copy of each distinct policy outcome the verified-token cache holds. Bounded by its
/// own bytes (`SHARED_OUTCOME_BYTES`): once full, an entry keeps its own outcome and counts it
/// in its share of `limits.token_cache_bytes`. Consulted on admission only (after a signature
/// verification), never on a hit. Belongs to one Pipeline, like the cache it serves.
#[derive(Default)]
struct SharedOutcomes {
    held: std::sync::Mutex<(std::collections::HashSet<Arc<PolicyOutcome>>, usize)>,
}

/// What the shared outcomes may take in all: 4 MiB, beside the cache's own bound.
const SHARED_OUTCOME_BYTES: usize = 4 << 20;

impl SharedOutcomes {
    /// The shared copy of `outcome` and the bytes an entry holding it must count: nothing when
    /// shared, its own size when the shared set is full.
    fn share(&self, outcome: Arc<PolicyOutcome>) -> (Arc<PolicyOutcome>, usize) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, bytes) = &mut *held;
        if let Some(shared) = set.get(&outcome) {
            return (shared.clone(), 0);
        }
        let size = outcome_bytes(&outcome);
        if *bytes + size > SHARED_OUTCOME_BYTES {
            return (outcome, size);
        }
        *bytes += size;
        set.insert(outcome.clone());
        (outcome, 0)
    }
}

/// Estimated heap bytes of a policy outcome kept in the verified-token cache (its share of
/// `limits.token_cache_bytes`). Runs once per admitted token, never on a hit.
fn outcome_bytes(outcome: &PolicyOutcome) -> usize {
    const ALLOCATION: usize = 16;
    let strings = |values: &mut dyn Iterator<Item = usize>| -> usize {
        values
            .map(|len| if len == 0 { 0 } else { ALLOCATION + len })
            .sum()
    };
    std::mem::size_of::<PolicyOutcome>()
        + 2 * std::mem::size_of::<usize>() // the Arc's counts
        + ALLOCATION
        + outcome.grants.capacity() * std::mem::size_of::<(crate::model::permission::Grant, String)>()
        // A grant's own strings are about as long as its text (`repository:acme/app:pull`).
        + strings(&mut outcome.grants.iter().map(|(grant, _)| grant.to_string().len()))
        // `granted()`: the grants again, without rules, and their header text.
        + 2 * ALLOCATION
        + outcome.grants.len() * std::mem::size_of::<crate::model::permission::Grant>()
        + 2 * strings(&mut outcome.grants.iter().map(|(grant, _)| grant.to_string().len()))
        + strings(&mut outcome.grants.iter().map(|(_, rule)| rule.len()))
        + outcome.matched_rules.capacity() * std::mem::size_of::<String>()
        + strings(&mut outcome.matched_rules.iter().map(String::len))
        + outcome.dropped.capacity() * std::mem::size_of::<String>()
        + strings(&mut outcome.dropped.iter().map(String::len))
}

/// Permissions joined by `, ` for a log field, formatted only if the event is written.
struct DisplayList<'a>(&'a [Permission]);

impl std::fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, permission) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{permission}")?;
        }
        Ok(())
    }
}

/// The issuer named in denies of a token of our own issuer before its source issuer is known
/// (metrics label, audit field).
pub const EXCHANGED_TOKEN_ISSUER: &str = "exchanged-token";

fn deny(reason: Reason, detail: &str, required: Option<Permission>) -> Decision {
    Decision::Deny {
        reason,
        detail: detail.to_string(),
        required,
        issuer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::permission::Grant;

    fn outcome(text: &str, rule: &str) -> Arc<PolicyOutcome> {
        Arc::new(PolicyOutcome::new(
            Grant::parse(text)
                .unwrap_or_default()
                .into_iter()
                .map(|grant| (grant, rule.to_string()))
                .collect(),
            vec![rule.to_string()],
            Vec::new(),
        ))
    }

    #[test]
    fn equal_outcomes_are_held_once_and_cost_their_entries_nothing() {
        let shared = SharedOutcomes::default();
        let (first, first_bytes) = shared.share(outcome("repository:acme/app:pull", "team"));
        let (second, second_bytes) = shared.share(outcome("repository:acme/app:pull", "team"));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!((first_bytes, second_bytes), (0, 0));
        // Another grant, or the same grant from another rule, is another outcome.
        let (other, _) = shared.share(outcome("repository:acme/app:pull", "ci"));
        assert!(!Arc::ptr_eq(&first, &other));
    }

    #[test]
    fn once_the_shared_set_is_full_an_entry_pays_for_its_own_outcome() {
        let shared = SharedOutcomes::default();
        let mut index = 0;
        // Distinct outcomes until the set refuses one: that one is counted by its entry.
        let refused = loop {
            let (_, bytes) =
                shared.share(outcome(&format!("repo:read on acme/app{index}"), "team"));
            if bytes > 0 {
                break bytes;
            }
            index += 1;
            assert!(index < 1_000_000, "the shared set never filled");
        };
        assert!(refused >= std::mem::size_of::<PolicyOutcome>());
        let held = shared.held.lock().map(|held| held.1).unwrap_or_default();
        assert!(held <= SHARED_OUTCOME_BYTES);
    }
}
