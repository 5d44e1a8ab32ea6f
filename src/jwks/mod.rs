//! JWKS: fetching issuers' public keys and caching them.
//!
//! Usage: `KeyStore::new(jwks settings)`, then `store.bind(&config)` gives every issuer its
//! shared `KeySource`s (one per key location and trust settings, so issuers that share keys
//! share a cache), started on first use. Checks call `current()` (a lock-free read of the
//! published key set) and, for an unknown `kid`, `refresh_for_unknown_kid`. A reload binds the
//! new configuration to the same store — unchanged sources keep their keys, take the new
//! `jwks` settings and issuer name — and `store.prune(&config)` forgets the sources no issuer
//! names any more.
//!
//! Like Envoy's `jwks_async_fetcher`: key sets are published by atomic swap so readers never
//! wait on a fetch; refreshed in the background before they expire, and at least every
//! `jwks.max_refresh_interval_seconds` (sooner after a failure, with backoff); an unknown kid
//! triggers at most one fetch in flight per source (waiters share it) and at most one per
//! minimum interval, so a flood of random kids cannot become a flood of fetches. Between those
//! fetches an unknown kid is answered at once, without a lock (see `RefetchGate`). A fetch that
//! returns a key already published keeps that key's object (`carry_over`), so the tokens it
//! verified stay in the verified-token cache: only a removed or changed key drops them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use aws_lc_rs::signature::{
    self as lc, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, VerificationAlgorithm,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use serde_json::Value;

pub mod client;
use tokio::sync::{Notify, watch};

use crate::config::{Config, JwksSettings, KeyLocation, KeySourceConfig, SigningAlgorithm};
use crate::metrics::Metrics;

/// The key type a key can verify, with its curve for EC keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, algorithm: SigningAlgorithm) -> bool {
        use SigningAlgorithm::*;
        matches!(
            (self, algorithm),
            (Self::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Self::EcP256, ES256)
                | (Self::EcP384, ES384)
                | (Self::Ed25519, EdDSA)
        )
    }
}

/// One public key from a JWKS.
pub struct VerificationKey {
    pub key_id: Option<String>,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it names one (RFC 7517 §4.4): the key is used only for it.
    pub algorithm: Option<SigningAlgorithm>,
    key: PublicKey,
}

impl VerificationKey {
    pub fn fits(&self, algorithm: SigningAlgorithm) -> bool {
        self.kind.fits(algorithm) && self.algorithm.is_none_or(|alg| alg == algorithm)
    }

    /// Whether `other` is this key again: same `kid`, type, `alg` and public key material.
    fn same_key(&self, other: &Self) -> bool {
        self.key_id == other.key_id
            && self.kind == other.kind
            && self.algorithm == other.algorithm
            && self.key.same_material(&other.key)
    }

    /// Whether `signature` (raw bytes, RFC 7518 §3) signs `message` with this key under
    /// `algorithm`. A key that does not fit the algorithm verifies nothing.
    pub fn verify(&self, algorithm: SigningAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        self.fits(algorithm)
            && self
                .key
                .parsed(algorithm)
                .is_some_and(|key| key.verify_sig(message, signature).is_ok())
    }
}

/// Key material parsed once for aws-lc-rs, so a verify does no key setup: building an RSA
/// key from `n` and `e` (and its Montgomery context) costs several microseconds, a good part
/// of the verify itself.
enum PublicKey {
    /// aws-lc-rs binds padding and hash to a parsed RSA key, and a JWK without `alg` may serve
    /// any of the six RSA algorithms: one parsed key per algorithm, made on first use.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        parsed: Box<[OnceLock<Option<ParsedPublicKey>>; 6]>,
    },
    /// EC and Ed25519 keys fit exactly one algorithm.
    Single(ParsedPublicKey),
}

impl PublicKey {
    /// `n` and `e` big-endian; leading zero bytes, which some IdPs send, are dropped.
    fn rsa(n: &[u8], e: &[u8]) -> Option<Self> {
        let significant = |bytes: &[u8]| {
            let start = bytes
                .iter()
                .position(|byte| *byte != 0)
                .unwrap_or(bytes.len());
            bytes[start..].to_vec()
        };
        let key = Self::Rsa {
            n: significant(n),
            e: significant(e),
            parsed: Default::default(),
        };
        // Parse one now so a malformed key is refused when the JWKS is read, not per token.
        key.parsed(SigningAlgorithm::RS256)?;
        Some(key)
    }

    fn single(algorithm: &'static dyn VerificationAlgorithm, bytes: &[u8]) -> Option<Self> {
        ParsedPublicKey::new(algorithm, bytes)
            .ok()
            .map(Self::Single)
    }

    fn same_material(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Rsa { n, e, .. }, Self::Rsa { n: n2, e: e2, .. }) => n == n2 && e == e2,
            // The bytes the key was parsed from: a SEC 1 point or an Ed25519 public key.
            (Self::Single(key), Self::Single(other)) => key.as_ref() == other.as_ref(),
            _ => false,
        }
    }

    fn parsed(&self, algorithm: SigningAlgorithm) -> Option<&ParsedPublicKey> {
        match self {
            Self::Single(key) => Some(key),
            Self::Rsa { n, e, parsed } => {
                let (slot, parameters) = rsa_parameters(algorithm)?;
                parsed[slot]
                    .get_or_init(|| {
                        RsaPublicKeyComponents {
                            n: n.as_slice(),
                            e: e.as_slice(),
                        }
                        .to_parsed_public_key(parameters)
                        .ok()
                    })
                    .as_ref()
            }
        }
    }
}

/// The aws-lc-rs parameters of an RSA algorithm (RFC 7518 §3.3, §3.5), with a slot index.
/// Keys under 2048 bits are refused by the parameters too.
fn rsa_parameters(algorithm: SigningAlgorithm) -> Option<(usize, &'static RsaParameters)> {
    use SigningAlgorithm::*;
    Some(match algorithm {
        RS256 => (0, &lc::RSA_PKCS1_2048_8192_SHA256),
        RS384 => (1, &lc::RSA_PKCS1_2048_8192_SHA384),
        RS512 => (2, &lc::RSA_PKCS1_2048_8192_SHA512),
        PS256 => (3, &lc::RSA_PSS_2048_8192_SHA256),
        PS384 => (4, &lc::RSA_PSS_2048_8192_SHA384),
        PS512 => (5, &lc::RSA_PSS_2048_8192_SHA512),
        ES256 | ES384 | EdDSA => return None,
    })
}

/// The keys to publish after a fetch: every fetched key that is a key of `previous` again
/// (same `kid`, type, `alg` and material) is replaced by that key's object. The verified-token
/// cache holds weak references to key objects, so a refetch that returns the same keys — after
/// an unknown kid, which anyone can send — keeps every cached token valid, while a key removed
/// from the JWKS, or changed under its `kid`, is dropped with the previous set and takes the
/// tokens it verified with it.
fn carry_over(
    previous: Option<&KeySet>,
    fetched: Vec<Arc<VerificationKey>>,
) -> Vec<Arc<VerificationKey>> {
    let Some(previous) = previous else {
        return fetched;
    };
    fetched
        .into_iter()
        .map(|key| {
            previous
                .keys
                .iter()
                .find(|old| old.same_key(&key))
                .cloned()
                .unwrap_or(key)
        })
        .collect()
}

/// A published key set.
pub struct KeySet {
    pub keys: Vec<Arc<VerificationKey>>,
    pub fetched_at: Instant,
    /// Increases with every publication; lets unknown-kid refetches see whether another
    /// fetch already happened since the caller looked.
    pub generation: u64,
}

impl KeySet {
    /// The key for a token's `kid` and `alg`. Without a `kid`, the one key that fits the
    /// algorithm, if exactly one does.
    pub fn find(
        &self,
        key_id: Option<&str>,
        algorithm: SigningAlgorithm,
    ) -> Option<&Arc<VerificationKey>> {
        match key_id {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.key_id.as_deref() == Some(kid) && key.fits(algorithm)),
            None => {
                let mut fitting = self.keys.iter().filter(|key| key.fits(algorithm));
                let first = fitting.next();
                if fitting.next().is_some() {
                    None
                } else {
                    first
                }
            }
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} sent an invalid document: {message}")]
    Invalid { url: String, message: String },
    #[error("discovery document at {url} is for issuer {found:?}, not this issuer")]
    IssuerMismatch { url: String, found: String },
}

impl FetchError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Status { .. } => "http_error",
            Self::TooLarge { .. } => "too_large",
            Self::Invalid { .. } => "invalid",
            Self::IssuerMismatch { .. } => "issuer_mismatch",
        }
    }
}

/// What an operator sees of a key source (readiness, `Status`, logs).
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    pub last_error: Option<String>,
    pub last_success: Option<Instant>,
    pub fetches: u64,
    /// Lifetime of the current key set (from `Cache-Control`, clamped).
    pub ttl: Option<Duration>,
}

/// The `jwks` settings and the HTTP client built from them, replaced whole when a reload
/// changes `jwks`.
struct FetchSetup {
    settings: JwksSettings,
    client: reqwest::Client,
}

impl FetchSetup {
    fn new(settings: JwksSettings) -> Self {
        let base = || {
            reqwest::Client::builder()
                .timeout(settings.fetch_timeout)
                .connect_timeout(settings.fetch_timeout)
                .redirect(reqwest::redirect::Policy::custom(same_origin_redirect))
                .user_agent(concat!("quay-authz/", env!("CARGO_PKG_VERSION")))
        };
        // The CA bundle and proxy were checked when the configuration loaded, so this should
        // not fail; if it does, say so loudly and fetch without them — still with the timeouts
        // and the same-origin redirect policy.
        let client = client::configure_fetch_client(base(), &settings)
            .and_then(|builder| builder.build())
            .or_else(|error| {
                tracing::error!(%error, "cannot build the JWKS client with jwks.ca_file and jwks.proxy");
                base().build()
            })
            .unwrap_or_default();
        Self { settings, client }
    }
}

/// The keys behind one location, shared by every issuer string that names it with the same
/// trust settings (`KeySourceConfig`).
pub struct KeySource {
    /// Never changes: a configuration that changes it gets another source.
    pub config: KeySourceConfig,
    /// The issuer the source is reported under in metrics and logs: the first issuer of the
    /// configuration in force that uses it.
    issuer_name: ArcSwap<String>,
    /// The configuration in force's `jwks` settings.
    fetch: ArcSwap<FetchSetup>,
    /// Wakes the refresher for a fetch now, with new settings.
    wake: Arc<Notify>,
    metrics: Metrics,
    current: ArcSwapOption<KeySet>,
    generation: AtomicU64,
    /// Held by the one fetch in flight (scheduled or unknown-kid).
    refetch: tokio::sync::Mutex<()>,
    gate: RefetchGate,
    /// Counts finished fetches, bumped once the refetch lock is free again: unknown-kid
    /// lookups that found a fetch in flight wait here for its keys, not in the lock's queue.
    fetches_done: watch::Sender<u64>,
    /// Dropped with the source; its refresher then stops at once, even mid-sleep.
    alive: watch::Sender<()>,
    status: Mutex<SourceStatus>,
    /// Keys given up front (offline `explain --jwks-file`): never fetched.
    fixed: bool,
    discovered: Mutex<Option<DiscoveredJwks>>,
}

impl KeySource {
    /// The configured issuer this source is reported under.
    pub fn issuer_name(&self) -> String {
        self.issuer_name.load().as_str().to_string()
    }

    /// Takes the issuer name and `jwks` settings of the configuration being bound. New
    /// settings apply from a fetch made now, so a shorter refresh interval or a new CA or
    /// proxy does not wait for the old schedule.
    fn adopt(&self, issuer_name: &str, fetch: &Arc<FetchSetup>) {
        if self.issuer_name.load().as_str() != issuer_name {
            let old = self.issuer_name.swap(Arc::new(issuer_name.to_string()));
            let url = self.config.location.url();
            let _ = self.metrics.jwks_keys.remove_label_values(&[&old, url]);
            if let Some(set) = self.current() {
                self.metrics
                    .jwks_keys
                    .with_label_values(&[issuer_name, url])
                    .set(set.keys.len() as i64);
            }
        }
        if !Arc::ptr_eq(&self.fetch.load(), fetch) {
            self.fetch.store(fetch.clone());
            if let Ok(mut discovered) = self.discovered.lock() {
                *discovered = None;
            }
            self.wake.notify_one();
        }
    }

    /// The published key set, if any: a lock-free load.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    pub fn status(&self) -> SourceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn has_keys(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|set| !set.keys.is_empty())
    }

    /// Starts the background refresher (first fetch at once). It stops when the source is
    /// dropped.
    pub fn start(self: &Arc<Self>) {
        self.spawn_refresher();
    }

    fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<KeySource> = Arc::downgrade(self);
        let mut dropped = self.alive.subscribe();
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let Some(source) = weak.upgrade() else { return };
                let wait = match source.refresh().await {
                    Ok(ttl) => {
                        failures = 0;
                        refresh_delay(ttl, source.fetch.load().settings.max_refresh_interval)
                    }
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        backoff(failures)
                    }
                };
                drop(source);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {}
                    // Nothing is ever sent: this ends only when the source is dropped.
                    _ = dropped.changed() => return,
                }
            }
        })
    }

    /// For a token whose `kid` is not in the set it saw (`seen_generation`): the set to look
    /// in again. Fetches only when no fetch published since, none is in flight, and no
    /// unknown-kid fetch was attempted within the minimum interval; a fetch in flight is
    /// shared. Within the interval the answer is the current set at once, without a lock.
    pub async fn refresh_for_unknown_kid(
        &self,
        seen_generation: Option<u64>,
    ) -> Option<Arc<KeySet>> {
        if self.fixed {
            return self.current();
        }
        let interval = self.fetch.load().settings.min_refetch_interval;
        loop {
            let current = self.current();
            if current.as_ref().map(|set| set.generation) != seen_generation
                || self.gate.settled(Instant::now(), interval)
            {
                return current;
            }
            let mut done = self.fetches_done.subscribe();
            let done_before = *done.borrow_and_update();
            let Ok(guard) = self.refetch.try_lock() else {
                // Single flight: wait for the fetch in flight, then look again.
                let _ = done.wait_for(|count| *count != done_before).await;
                continue;
            };
            // A fetch may have finished between the first look and the lock.
            let current = self.current();
            if current.as_ref().map(|set| set.generation) != seen_generation
                || self.gate.attempted_within(Instant::now(), interval)
            {
                return current;
            }
            // In flight before the attempt is stamped, so no lookup takes the stamp for a
            // finished fetch.
            let turn = FetchTurn::new(self, guard);
            self.gate.record_attempt(Instant::now());
            let _ = turn.fetch().await;
            return self.current();
        }
    }

    /// One scheduled fetch and publication; returns the lifetime of the new keys. It takes
    /// the refetch lock so it never overlaps an unknown-kid fetch, but does not count against
    /// the unknown-kid interval: a rotation right after a scheduled refresh must still be seen.
    async fn refresh(&self) -> Result<Duration, FetchError> {
        let guard = self.refetch.lock().await;
        FetchTurn::new(self, guard).fetch().await
    }

    async fn refresh_locked(&self) -> Result<Duration, FetchError> {
        let fetch = self.fetch.load_full();
        let result = fetch_key_set(
            &fetch.client,
            &self.config,
            &fetch.settings,
            &self.discovered,
        )
        .await;
        let label = match &result {
            Ok(_) => "success",
            Err(error) => error.kind(),
        };
        let issuer_name = self.issuer_name.load_full();
        self.metrics
            .jwks_fetches
            .with_label_values(&[&issuer_name, label])
            .inc();
        let mut status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        status.fetches += 1;
        let outcome = match result {
            Ok((keys, ttl)) => {
                let keys = carry_over(self.current().as_deref(), keys);
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics
                    .jwks_keys
                    .with_label_values(&[&issuer_name, self.config.location.url()])
                    .set(keys.len() as i64);
                self.current.store(Some(Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                    generation,
                })));
                status.last_error = None;
                status.last_success = Some(Instant::now());
                status.ttl = Some(ttl);
                tracing::info!(issuer = %issuer_name, url = %self.config.location.url(), ttl_seconds = ttl.as_secs(), "key set refreshed");
                Ok(ttl)
            }
            Err(error) => {
                tracing::warn!(issuer = %issuer_name, error = %error, "key set fetch failed; keeping the previous keys");
                // Past the stale limit, old keys stop serving: a long-dead IdP's keys may
                // have been revoked since.
                if status
                    .last_success
                    .is_some_and(|at| at.elapsed() > fetch.settings.stale_limit)
                {
                    self.current.store(None);
                }
                status.last_error = Some(error.to_string());
                Err(error)
            }
        };
        if let Ok(mut shared) = self.status.lock() {
            *shared = status;
        }
        outcome
    }
}

/// How long after a successful fetch the next scheduled one starts: at 80% of the key set's
/// lifetime, so keys are replaced before they expire — but never later than `max_interval`
/// (`jwks.max_refresh_interval_seconds`, 10 min by default as Envoy's jwt_authn
/// `cache_duration`): an IdP may send `max-age` of a day, and a key it pulls after a
/// compromise must stop validating within the interval, not the day.
pub fn refresh_delay(ttl: Duration, max_interval: Duration) -> Duration {
    ttl.mul_f64(0.8).min(max_interval)
}

fn backoff(failures: u32) -> Duration {
    let seconds = 1u64 << failures.min(8);
    Duration::from_secs(seconds.min(300))
}

/// One fetch under the refetch lock. However it ends, even when the Check that started it
/// is cancelled, it clears the in-flight mark, frees the lock, and only then wakes the
/// lookups waiting for it (so a woken lookup that needs its own fetch can take the lock).
struct FetchTurn<'s> {
    source: &'s KeySource,
    guard: Option<tokio::sync::MutexGuard<'s, ()>>,
}

impl<'s> FetchTurn<'s> {
    fn new(source: &'s KeySource, guard: tokio::sync::MutexGuard<'s, ()>) -> Self {
        source.gate.in_flight.store(true, Ordering::Release);
        Self {
            source,
            guard: Some(guard),
        }
    }

    async fn fetch(self) -> Result<Duration, FetchError> {
        self.source.refresh_locked().await
    }
}

impl Drop for FetchTurn<'_> {
    fn drop(&mut self) {
        self.source.gate.in_flight.store(false, Ordering::Release);
        drop(self.guard.take());
        self.source
            .fetches_done
            .send_modify(|count| *count = count.wrapping_add(1));
    }
}

// === impl RefetchGate ===

/// When an unknown kid may send a source back to its IdP, decided without a lock.
///
/// This is the negative cache of unknown kids. After an unknown-kid fetch, the key set it
/// left is taken as complete until the minimum interval ends: a kid absent from the current
/// set is known absent, and the Check answers `unknown_key` at once instead of queueing on
/// the refetch lock. One timestamp covers every kid, so random kids cannot grow it; and a
/// kid is always looked up in the current set, so a key published since (by a scheduled
/// refresh, or the next unknown-kid fetch once the interval ends) is found.
struct RefetchGate {
    origin: Instant,
    /// When the last unknown-kid fetch began, in nanoseconds after `origin` plus one; zero
    /// when none has.
    last_attempt: AtomicU64,
    /// A fetch is in flight: a kid arriving now waits for its keys rather than be refused,
    /// so the first tokens signed with a newly rotated key are not denied.
    in_flight: AtomicBool,
}

impl RefetchGate {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            last_attempt: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
        }
    }

    fn record_attempt(&self, now: Instant) {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        let stamp = u64::try_from(since).unwrap_or(u64::MAX - 1) + 1;
        self.last_attempt.store(stamp, Ordering::Release);
    }

    /// Whether an unknown-kid fetch began less than `interval` before `now`.
    fn attempted_within(&self, now: Instant, interval: Duration) -> bool {
        match self.last_attempt.load(Ordering::Acquire) {
            0 => false,
            stamp => {
                let at = self.origin + Duration::from_nanos(stamp - 1);
                now.saturating_duration_since(at) < interval
            }
        }
    }

    /// Whether an unknown kid is answered from the current set at `now`, with no fetch and no
    /// wait.
    fn settled(&self, now: Instant, interval: Duration) -> bool {
        !self.in_flight.load(Ordering::Acquire) && self.attempted_within(now, interval)
    }
}

/// Key sources, one per location and trust settings (`KeySourceConfig`: the URL, the issuers
/// a discovery document may name, whether plain HTTP is allowed), shared across issuers and
/// across configuration reloads. A reload that changes any of those gets a new source, fetched
/// under the new settings; one that changes only the issuer's name or the `jwks` settings
/// keeps the source and its keys.
pub struct KeyStore {
    fetch: ArcSwap<FetchSetup>,
    metrics: Metrics,
    sources: DashMap<KeySourceConfig, Arc<KeySource>>,
}

impl KeyStore {
    pub fn new(settings: JwksSettings, metrics: Metrics) -> Self {
        Self {
            fetch: ArcSwap::from_pointee(FetchSetup::new(settings)),
            metrics,
            sources: DashMap::new(),
        }
    }

    /// The key sources of every issuer of `config` (in `config.issuers` order, then each
    /// issuer's `key_sources` order), created and started on first use. Sources already held
    /// take `config.jwks` and the name of the first issuer that uses them.
    pub fn bind(&self, config: &Config) -> Vec<Vec<Arc<KeySource>>> {
        let fetch = self.configure(&config.jwks);
        let mut named: HashSet<&KeySourceConfig> = HashSet::new();
        config
            .issuers
            .iter()
            .map(|issuer| {
                issuer
                    .key_sources
                    .iter()
                    .map(|source_config| {
                        let source = self.source(&issuer.name, source_config);
                        if named.insert(source_config) {
                            source.adopt(&issuer.name, &fetch);
                        }
                        source
                    })
                    .collect()
            })
            .collect()
    }

    /// The fetch setup for `settings`: the current one if they did not change.
    fn configure(&self, settings: &JwksSettings) -> Arc<FetchSetup> {
        let current = self.fetch.load_full();
        if current.settings == *settings {
            return current;
        }
        let fresh = Arc::new(FetchSetup::new(settings.clone()));
        self.fetch.store(fresh.clone());
        fresh
    }

    /// The source for `config`, created (and its refresher started) on first use.
    pub fn source(&self, issuer_name: &str, config: &KeySourceConfig) -> Arc<KeySource> {
        self.sources
            .entry(config.clone())
            .or_insert_with(|| {
                let source = self.new_source(issuer_name, config, false);
                source.start();
                source
            })
            .clone()
    }

    /// Forgets the sources no issuer of `config` names any more (after a reload), and their
    /// key-count gauges. A pipeline still answering Checks keeps its sources until it is
    /// dropped; each source's refresher stops when the source does.
    pub fn prune(&self, config: &Config) {
        let referenced: HashSet<&KeySourceConfig> = config
            .issuers
            .iter()
            .flat_map(|issuer| issuer.key_sources.iter())
            .collect();
        let mut dropped = Vec::new();
        self.sources.retain(|source_config, source| {
            let keep = referenced.contains(source_config);
            if !keep {
                let issuer_name = source.issuer_name();
                let url = source_config.location.url();
                tracing::info!(issuer = %issuer_name, url = %url, "key source no longer configured; dropped");
                dropped.push((issuer_name, url.to_string()));
            }
            keep
        });
        // A source that replaced a dropped one (same URL, new trust settings) may report under
        // the same labels: the gauge then shows its keys, or nothing until it has some.
        for (issuer_name, url) in dropped {
            let _ = self
                .metrics
                .jwks_keys
                .remove_label_values(&[&issuer_name, &url]);
            for kept in self.sources.iter() {
                if kept.config.location.url() == url
                    && kept.issuer_name() == issuer_name
                    && let Some(set) = kept.current()
                {
                    self.metrics
                        .jwks_keys
                        .with_label_values(&[&issuer_name, &url])
                        .set(set.keys.len() as i64);
                }
            }
        }
    }

    /// How many key sources the store holds (reload prunes the ones no issuer uses).
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Installs a fixed key set for `config` that is never refreshed (offline `explain` with
    /// `--jwks-file`). Returns how many usable keys the document held.
    pub fn preload(
        &self,
        issuer_name: &str,
        config: &KeySourceConfig,
        jwks: &[u8],
    ) -> Result<usize, String> {
        let keys = parse_jwks(jwks, self.fetch.load().settings.max_keys)?;
        let count = keys.len();
        let source = self.new_source(issuer_name, config, true);
        let generation = source.generation.fetch_add(1, Ordering::Relaxed) + 1;
        source.current.store(Some(Arc::new(KeySet {
            keys,
            fetched_at: Instant::now(),
            generation,
        })));
        self.sources.insert(config.clone(), source);
        Ok(count)
    }

    fn new_source(
        &self,
        issuer_name: &str,
        config: &KeySourceConfig,
        fixed: bool,
    ) -> Arc<KeySource> {
        Arc::new(KeySource {
            fixed,
            discovered: Mutex::new(None),
            issuer_name: ArcSwap::from_pointee(issuer_name.to_string()),
            config: config.clone(),
            fetch: ArcSwap::new(self.fetch.load_full()),
            wake: Arc::new(Notify::new()),
            metrics: self.metrics.clone(),
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            refetch: tokio::sync::Mutex::new(()),
            gate: RefetchGate::new(Instant::now()),
            fetches_done: watch::channel(0).0,
            alive: watch::channel(()).0,
            status: Mutex::new(SourceStatus::default()),
        })
    }
}

// === Fetching ===

/// A discovery document's `jwks_uri`, remembered for the key-set lifetime so a refresh (or an
/// unknown-kid refetch) costs one request, not two.
#[derive(Debug, Clone)]
struct DiscoveredJwks {
    url: String,
    until: Instant,
}

async fn fetch_key_set(
    client: &reqwest::Client,
    config: &KeySourceConfig,
    settings: &JwksSettings,
    discovered: &Mutex<Option<DiscoveredJwks>>,
) -> Result<(Vec<Arc<VerificationKey>>, Duration), FetchError> {
    let jwks_url = match &config.location {
        KeyLocation::Jwks(url) => url.clone(),
        KeyLocation::Discovery(url) => {
            let cached = discovered
                .lock()
                .ok()
                .and_then(|cached| cached.clone())
                .filter(|cached| Instant::now() < cached.until);
            match cached {
                Some(cached) => cached.url,
                None => {
                    let (body, cache_control) =
                        fetch_limited(client, url, settings.max_response_bytes).await?;
                    let jwks_url = discovered_jwks_uri(url, &body, config)?;
                    let ttl = cache_lifetime(cache_control.as_deref(), settings);
                    if let Ok(mut slot) = discovered.lock() {
                        *slot = Some(DiscoveredJwks {
                            url: jwks_url.clone(),
                            until: Instant::now() + ttl,
                        });
                    }
                    jwks_url
                }
            }
        }
    };
    let (body, cache_control) =
        fetch_limited(client, &jwks_url, settings.max_response_bytes).await?;
    let keys = parse_jwks(&body, settings.max_keys).map_err(|message| FetchError::Invalid {
        url: jwks_url.clone(),
        message,
    })?;
    Ok((keys, cache_lifetime(cache_control.as_deref(), settings)))
}

/// `Cache-Control: max-age` clamped to the configured range, or the default lifetime.
fn cache_lifetime(cache_control: Option<&str>, settings: &JwksSettings) -> Duration {
    cache_control
        .and_then(max_age)
        .map(|age| age.clamp(settings.min_ttl, settings.max_ttl))
        .unwrap_or(settings.default_ttl)
}

/// Reads the `jwks_uri` from a discovery document after checking its `issuer` (OpenID
/// Connect Discovery §4.3: the document must be for the issuer we expect).
fn discovered_jwks_uri(
    url: &str,
    body: &[u8],
    config: &KeySourceConfig,
) -> Result<String, FetchError> {
    let invalid = |message: &str| FetchError::Invalid {
        url: url.to_string(),
        message: message.to_string(),
    };
    let document: Value = serde_json::from_slice(body).map_err(|_| invalid("not JSON"))?;
    let issuer = document
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no issuer"))?;
    if !config
        .expected_issuers
        .iter()
        .any(|expected| expected == issuer)
    {
        return Err(FetchError::IssuerMismatch {
            url: url.to_string(),
            found: issuer.chars().take(200).collect(),
        });
    }
    let jwks_uri = document
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no jwks_uri"))?;
    let secure = jwks_uri.starts_with("https://");
    if !(secure || config.allow_insecure_http && jwks_uri.starts_with("http://")) {
        return Err(invalid("jwks_uri is not https"));
    }
    Ok(jwks_uri.to_string())
}

/// Redirects are followed (at most 3) only within the origin first asked (RFC 6454: scheme,
/// host and port): a discovery or key URL that redirects to another scheme, host or port
/// (`127.0.0.2`, or another port of the same host, counts as another) would fetch keys from
/// somewhere the configuration never named, past its https check.
fn same_origin_redirect(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let same_origin = attempt.previous().first().is_some_and(|first| {
        first.scheme() == attempt.url().scheme()
            && first.host_str() == attempt.url().host_str()
            && first.port_or_known_default() == attempt.url().port_or_known_default()
    });
    if same_origin && attempt.previous().len() <= 3 {
        attempt.follow()
    } else {
        attempt.error(REDIRECT_REFUSED)
    }
}

const REDIRECT_REFUSED: &str =
    "redirect refused (only 3, and only to the same scheme, host and port, are followed)";

/// GETs a URL, refusing bodies over `limit` bytes without reading them whole.
async fn fetch_limited(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<(Vec<u8>, Option<String>), FetchError> {
    let unreachable = |error: reqwest::Error| FetchError::Unreachable {
        url: url.to_string(),
        message: if error.is_timeout() {
            "timed out".to_string()
        } else if error.is_redirect() {
            REDIRECT_REFUSED.to_string()
        } else if error.is_connect() {
            "connection failed".to_string()
        } else {
            "request failed".to_string()
        },
    };
    let mut response = client.get(url).send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    if response
        .content_length()
        .is_some_and(|length| length as usize > limit)
    {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let cache_control = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, cache_control))
}

/// `max-age` from a Cache-Control header (RFC 9111 §5.2.2.1); `no-store`/`no-cache` → 0.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(value) = directive.strip_prefix("max-age=") {
            age = value
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// Parses a JWKS (RFC 7517 §5), keeping only signature keys we can use safely: RSA keys of at
/// least 2048 bits, P-256/P-384 EC keys, Ed25519. Encryption keys (`use: enc`), symmetric and
/// unknown key types are skipped with a log line.
pub fn parse_jwks(body: &[u8], max_keys: usize) -> Result<Vec<Arc<VerificationKey>>, String> {
    let document: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_string())?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| "no keys array".to_string())?;
    let mut keys = Vec::new();
    for entry in entries {
        if keys.len() >= max_keys {
            tracing::warn!(
                max_keys,
                "JWKS has more keys than allowed; ignoring the rest"
            );
            break;
        }
        match parse_jwk(entry) {
            Ok(key) => keys.push(Arc::new(key)),
            Err(why) => {
                let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("");
                tracing::info!(kid = %kid.chars().take(64).collect::<String>(), why, "skipping JWKS key");
            }
        }
    }
    Ok(keys)
}

fn parse_jwk(entry: &Value) -> Result<VerificationKey, &'static str> {
    let text = |name: &str| entry.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|usage| usage != "sig") {
        return Err("not a signature key (use)");
    }
    let algorithm = match text("alg") {
        None => None,
        Some(alg) => Some(SigningAlgorithm::from_name(alg).ok_or("unsupported alg")?),
    };
    let decode = |name: &str, what: &'static str| {
        URL_SAFE_NO_PAD
            .decode(text(name).ok_or(what)?)
            .map_err(|_| "key component is not base64url")
    };
    let (kind, key) = match text("kty") {
        Some("RSA") => {
            let modulus = decode("n", "RSA key without n")?;
            let exponent = decode("e", "RSA key without e")?;
            let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
            if significant * 8 < 2048 {
                return Err("RSA key shorter than 2048 bits");
            }
            let key = PublicKey::rsa(&modulus, &exponent).ok_or("bad RSA key")?;
            (KeyKind::Rsa, key)
        }
        Some("EC") => {
            let (kind, algorithm, size): (_, &'static dyn VerificationAlgorithm, _) =
                match text("crv") {
                    Some("P-256") => (KeyKind::EcP256, &lc::ECDSA_P256_SHA256_FIXED, 32),
                    Some("P-384") => (KeyKind::EcP384, &lc::ECDSA_P384_SHA384_FIXED, 48),
                    _ => return Err("unsupported EC curve"),
                };
            let x = decode("x", "EC key without x")?;
            let y = decode("y", "EC key without y")?;
            if x.len() != size || y.len() != size {
                return Err("EC coordinates do not fit the curve");
            }
            // SEC 1 §2.3.3 uncompressed point: 0x04 || x || y.
            let point: Vec<u8> = [&[4u8][..], &x, &y].concat();
            (
                kind,
                PublicKey::single(algorithm, &point).ok_or("bad EC key")?,
            )
        }
        Some("OKP") if text("crv") == Some("Ed25519") => {
            let x = decode("x", "OKP key without x")?;
            (
                KeyKind::Ed25519,
                PublicKey::single(&lc::ED25519, &x).ok_or("bad Ed25519 key")?,
            )
        }
        _ => return Err("unsupported key type"),
    };
    if algorithm.is_some_and(|alg| !kind.fits(alg)) {
        return Err("alg does not fit the key type");
    }
    Ok(VerificationKey {
        key_id: text("kid").map(str::to_string),
        kind,
        algorithm,
        key,
    })
}

/// A 2048-bit RSA key (not one anyone holds the private half of) with `kid`, for tests of the
/// caches that hold keys.
#[cfg(test)]
pub(crate) fn test_key(kid: &str) -> Arc<VerificationKey> {
    let jwk = tests::rsa_jwk(2048, serde_json::json!({ "kid": kid }));
    Arc::new(parse_jwk(&jwk).expect("a usable test key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rsa_jwk(bits: usize, extra: Value) -> Value {
        let mut n = vec![0xC1u8; bits / 8];
        n[bits / 8 - 1] = 0x01;
        let mut jwk = serde_json::json!({"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"});
        if let (Some(target), Some(source)) = (jwk.as_object_mut(), extra.as_object()) {
            target.extend(source.clone());
        }
        jwk
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let jwks = serde_json::json!({"keys": [
            rsa_jwk(2048, serde_json::json!({})),
            rsa_jwk(1024, serde_json::json!({"kid": "short"})),
            rsa_jwk(2048, serde_json::json!({"kid": "enc", "use": "enc"})),
            rsa_jwk(2048, serde_json::json!({"kid": "es", "alg": "ES256"})),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "XYZ", "kid": "unknown"},
        ]});
        let keys = parse_jwks(jwks.to_string().as_bytes(), 10).expect("parsed");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_id.as_deref(), Some("r"));
        assert!(parse_jwks(b"[]", 10).is_err());
        assert!(parse_jwks(b"garbage", 10).is_err());
        let many = serde_json::json!({"keys": vec![rsa_jwk(2048, serde_json::json!({})); 5]});
        assert_eq!(
            parse_jwks(many.to_string().as_bytes(), 3)
                .expect("parsed")
                .len(),
            3
        );
    }

    #[test]
    fn key_lookup_by_kid_and_algorithm() {
        let jwks = serde_json::json!({"keys": [
            rsa_jwk(2048, serde_json::json!({"kid": "a"})),
            rsa_jwk(2048, serde_json::json!({"kid": "b", "alg": "PS256"})),
        ]});
        let set = KeySet {
            keys: parse_jwks(jwks.to_string().as_bytes(), 10).expect("parsed"),
            fetched_at: Instant::now(),
            generation: 1,
        };
        assert!(set.find(Some("a"), SigningAlgorithm::RS256).is_some());
        assert!(set.find(Some("b"), SigningAlgorithm::RS256).is_none());
        assert!(set.find(Some("b"), SigningAlgorithm::PS256).is_some());
        assert!(set.find(Some("a"), SigningAlgorithm::ES256).is_none());
        assert!(set.find(Some("c"), SigningAlgorithm::RS256).is_none());
        // Without a kid only an unambiguous key is used.
        assert_eq!(
            set.find(None, SigningAlgorithm::RS256)
                .and_then(|k| k.key_id.clone()),
            Some("a".into())
        );
        assert!(set.find(None, SigningAlgorithm::PS256).is_none());
    }

    fn key_set(keys: Vec<Arc<VerificationKey>>) -> KeySet {
        KeySet {
            keys,
            fetched_at: Instant::now(),
            generation: 1,
        }
    }

    fn parsed(jwks: Value) -> Vec<Arc<VerificationKey>> {
        parse_jwks(jwks.to_string().as_bytes(), 10).expect("parsed")
    }

    #[test]
    fn a_refetch_keeps_the_objects_of_unchanged_keys_only() {
        let other_n = URL_SAFE_NO_PAD.encode([0xC3u8; 256]);
        let jwks = serde_json::json!({"keys": [
            rsa_jwk(2048, serde_json::json!({"kid": "same"})),
            rsa_jwk(2048, serde_json::json!({"kid": "removed"})),
            rsa_jwk(2048, serde_json::json!({"kid": "changed"})),
            rsa_jwk(2048, serde_json::json!({"kid": "alg", "alg": "RS256"})),
        ]});
        let previous = key_set(parsed(jwks));
        let refetched = serde_json::json!({"keys": [
            rsa_jwk(2048, serde_json::json!({"kid": "same"})),
            // The same kid, another modulus: a different key.
            rsa_jwk(2048, serde_json::json!({"kid": "changed", "n": other_n})),
            // The same material restricted to another algorithm: a different key too.
            rsa_jwk(2048, serde_json::json!({"kid": "alg", "alg": "PS256"})),
            rsa_jwk(2048, serde_json::json!({"kid": "new"})),
        ]});
        let published = carry_over(Some(&previous), parsed(refetched));
        let kept = |kid: &str| {
            let old = previous.find(Some(kid), SigningAlgorithm::RS256);
            let new = published
                .iter()
                .find(|key| key.key_id.as_deref() == Some(kid));
            matches!((old, new), (Some(old), Some(new)) if Arc::ptr_eq(old, new))
        };
        assert!(kept("same"), "an unchanged key keeps its object");
        assert!(!kept("changed"));
        assert!(!kept("alg"));
        assert_eq!(published.len(), 4);
        // Once the previous set is gone, only the carried-over key's object lives on: the
        // token cache's weak references to the others die.
        let weak: Vec<(String, Weak<VerificationKey>)> = previous
            .keys
            .iter()
            .map(|key| (key.key_id.clone().unwrap_or_default(), Arc::downgrade(key)))
            .collect();
        drop(previous);
        let alive: Vec<&str> = weak
            .iter()
            .filter(|(_, key)| key.strong_count() > 0)
            .map(|(kid, _)| kid.as_str())
            .collect();
        assert_eq!(alive, ["same"]);
        // EC keys compare by their point.
        let ec_jwk = || {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key");
            let point = pair.public_key().as_ref();
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "ec",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
        };
        let (one, two) = (ec_jwk(), ec_jwk());
        let key = |jwk: &Value| parse_jwk(jwk).expect("EC key");
        assert!(key(&one).same_key(&key(&one)));
        assert!(!key(&one).same_key(&key(&two)));
        assert!(carry_over(None, Vec::new()).is_empty());
    }

    #[test]
    fn refresh_comes_before_expiry_and_within_the_maximum_interval() {
        let ten_minutes = Duration::from_secs(600);
        // A day's max-age: 10 minutes, not 19 hours.
        assert_eq!(
            refresh_delay(Duration::from_secs(86_400), ten_minutes),
            ten_minutes
        );
        // A short lifetime: at 80% of it, before the keys expire.
        assert_eq!(
            refresh_delay(Duration::from_secs(300), ten_minutes),
            Duration::from_secs(240)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(3600), Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn discovery_issuer_must_match() {
        let config = KeySourceConfig {
            location: KeyLocation::Discovery("https://idp/.well-known/openid-configuration".into()),
            expected_issuers: vec!["https://idp".into()],
            allow_insecure_http: false,
        };
        let good = br#"{"issuer":"https://idp","jwks_uri":"https://idp/keys"}"#;
        assert_eq!(
            discovered_jwks_uri("u", good, &config),
            Ok("https://idp/keys".into())
        );
        let other = br#"{"issuer":"https://evil","jwks_uri":"https://idp/keys"}"#;
        assert!(matches!(
            discovered_jwks_uri("u", other, &config),
            Err(FetchError::IssuerMismatch { .. })
        ));
        let insecure = br#"{"issuer":"https://idp","jwks_uri":"http://idp/keys"}"#;
        assert!(matches!(
            discovered_jwks_uri("u", insecure, &config),
            Err(FetchError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_kids_are_settled_within_the_interval_after_an_attempt() {
        let origin = Instant::now();
        let gate = RefetchGate::new(origin);
        let interval = Duration::from_secs(30);
        let at = |seconds: u64| origin + Duration::from_secs(seconds);
        // Never attempted: the first unknown kid must be allowed to fetch.
        assert!(!gate.settled(at(100), interval));
        gate.record_attempt(at(100));
        assert!(gate.settled(at(100), interval));
        assert!(gate.settled(at(129), interval));
        assert!(!gate.settled(at(130), interval), "the interval ended");
        // A fetch in flight is waited for, not answered from the old set.
        gate.in_flight.store(true, Ordering::Release);
        assert!(!gate.settled(at(110), interval));
        assert!(gate.attempted_within(at(110), interval));
        gate.in_flight.store(false, Ordering::Release);
        // An interval of zero never settles: every unknown kid may fetch.
        assert!(!gate.settled(at(100), Duration::ZERO));
    }

    /// A configuration whose one issuer takes its keys from `jwks_url`.
    fn config_with_keys_at(jwks_url: &str) -> Config {
        let text = format!(
            "quay: {{service: q, realm: \"https://q/v2/auth\"}}\nissuers:\n  - name: kept\n    issuer: https://kept.example\n    audiences: [q]\n    jwks_uri: {jwks_url}\n    allow_insecure_http: true\n"
        );
        Config::parse(&text, "t").expect("config")
    }

    fn settings() -> JwksSettings {
        config_with_keys_at("http://127.0.0.1:1/keys").jwks
    }

    fn jwks_config(url: String) -> KeySourceConfig {
        KeySourceConfig {
            location: KeyLocation::Jwks(url),
            expected_issuers: Vec::new(),
            allow_insecure_http: true,
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        // A hang guard only: each condition normally holds within milliseconds.
        for _ in 0..400 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{what}");
    }

    // Tests with a live issuer need the `dev` feature (on by default); the rest run without.
    #[cfg(feature = "dev")]
    async fn dev_issuer() -> crate::dev::issuer::DevIssuer {
        crate::dev::issuer::DevIssuer::start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("issuer")
    }

    #[cfg(feature = "dev")]
    #[tokio::test]
    async fn unknown_kid_lookups_share_one_fetch_and_then_answer_without_the_idp() {
        let issuer = dev_issuer().await;
        let store = KeyStore::new(settings(), Metrics::new());
        let source = store.source("dev", &jwks_config(issuer.jwks_url()));
        wait_for("first keys", || source.has_keys()).await;
        let fetches = issuer.jwks_fetches();
        let seen = source.current().map(|set| set.generation);
        let lookups: Vec<_> = (0..50)
            .map(|_| {
                let source = source.clone();
                tokio::spawn(async move { source.refresh_for_unknown_kid(seen).await })
            })
            .collect();
        for lookup in lookups {
            assert!(lookup.await.expect("lookup").is_some());
        }
        assert_eq!(issuer.jwks_fetches(), fetches + 1, "one shared fetch");
        // Within the interval, a lookup in any set is answered without a fetch.
        let seen = source.current().map(|set| set.generation);
        for _ in 0..50 {
            source.refresh_for_unknown_kid(seen).await;
        }
        assert_eq!(issuer.jwks_fetches(), fetches + 1);
        assert!(!source.gate.in_flight.load(Ordering::Acquire));
    }

    #[cfg(feature = "dev")]
    #[tokio::test]
    async fn pruned_sources_are_dropped_and_their_refreshers_stop() {
        let issuer = dev_issuer().await;
        let store = KeyStore::new(settings(), Metrics::new());
        let config = config_with_keys_at(&issuer.jwks_url());
        let kept = config.issuers[0].key_sources[0].clone();
        let kept_source = store.source("kept", &kept);
        let removed = jwks_config(format!("{}?removed", issuer.jwks_url()));
        let removed_source = store.new_source("removed", &removed, false);
        let refresher = removed_source.spawn_refresher();
        store
            .sources
            .insert(removed.clone(), removed_source.clone());
        wait_for("first keys", || {
            kept_source.has_keys() && removed_source.has_keys()
        })
        .await;
        let weak = Arc::downgrade(&removed_source);
        drop(removed_source);

        store.prune(&config);
        assert_eq!(store.source_count(), 1);
        assert!(weak.upgrade().is_none(), "the pruned source is dropped");
        // Its refresher sleeps until the keys' refresh time, 10 min away: it must end now.
        wait_for("the pruned source's refresher stops", || {
            refresher.is_finished()
        })
        .await;
        assert!(
            Arc::ptr_eq(&store.source("kept", &kept), &kept_source),
            "the kept source is still the store's"
        );
    }
}
