//! Prometheus metrics. Labels are bounded: decision, reason code, configured issuer name and
//! fetch result — never a subject, a path or a token.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The git revision this binary was built from (`build.rs`: `QUAY_AUTHZ_GIT_REVISION` at build
/// time, else the checkout's `HEAD`, else `unknown`).
pub const GIT_REVISION: &str = env!("QUAY_AUTHZ_GIT_REVISION");

/// Name of the key-set age gauge; alert rules in `deploy/` are written against it.
pub const KEY_SET_AGE: &str = "quay_authz_jwks_key_set_age_seconds";

/// The age of one published key set, computed when `/metrics` is scraped.
#[derive(Debug, Clone)]
pub struct KeySetAge<'a> {
    pub issuer: &'a str,
    /// The key source's URL, as in `quay_authz_jwks_keys`.
    pub source: &'a str,
    pub age: Duration,
}

/// Audit events the log writer dropped, for the whole process: the writer is set up with the
/// logging, before any service and its registry exist, so every `Metrics` registers this one
/// counter (`check::audit::NonBlocking` increments it).
pub static AUDIT_EVENTS_DROPPED: std::sync::LazyLock<prometheus::IntCounter> =
    std::sync::LazyLock::new(|| {
        prometheus::IntCounter::new(
            "quay_authz_audit_events_dropped_total",
            "Audit events of allowed requests dropped because the log writer fell behind",
        )
        .expect("static metric definition")
    });

/// Every metric of one service instance, on its own registry (so tests can run several).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub decisions: IntCounterVec,
    pub check_duration: HistogramVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub token_cache: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// `token_cache` with `result="hit"` and `"miss"`, resolved once (no label lookup per Check).
    pub token_cache_hits: prometheus::IntCounter,
    pub token_cache_misses: prometheus::IntCounter,
    pub token_cache_entries: prometheus::IntGauge,
    /// Estimated bytes held by the verified-token cache (bounded by `limits.token_cache_bytes`).
    pub token_cache_bytes: prometheus::IntGauge,
    pub token_cache_evictions: prometheus::IntCounter,
    /// Audit events the non-blocking writer could not queue (README "Audit log").
    pub audit_events_dropped: prometheus::IntCounter,
    /// Bridge tokens signed, by source issuer (README "Identity bridge").
    pub bridge_mints: IntCounterVec,
    /// Mint-cache lookups by result (hit, miss).
    pub bridge_mint_cache: IntCounterVec,
    /// Revocations through the admin API, by kind (jti, principal).
    pub token_revocations: IntCounterVec,
    /// 1 while the token store (`bridge.store`) answers, 0 while it does not.
    pub token_store_up: prometheus::IntGauge,
    /// Token exchanges by result: `issued` or the refusal's reason code (README "Token
    /// exchange"), a bounded set.
    pub token_exchanges: IntCounterVec,
    /// Exchanged tokens live (unexpired, unrevoked) in the token store.
    pub exchanged_tokens_live: prometheus::IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "quay_authz_decisions_total",
                "Check decisions by decision, reason code and issuer",
            ),
            &["decision", "reason", "issuer"],
        )
        .expect("static metric definition");
        let check_duration = HistogramVec::new(
            HistogramOpts::new(
                "quay_authz_check_duration_seconds",
                "Time to answer one Check",
            )
            .buckets(vec![
                0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.025,
                0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["decision"],
        )
        .expect("static metric definition");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "quay_authz_jwks_fetches_total",
                "Key-set fetches by issuer and result",
            ),
            &["issuer", "result"],
        )
        .expect("static metric definition");
        let jwks_keys = IntGaugeVec::new(
            Opts::new("quay_authz_jwks_keys", "Usable keys per issuer key source"),
            &["issuer", "source"],
        )
        .expect("static metric definition");
        let token_cache = IntCounterVec::new(
            Opts::new(
                "quay_authz_token_cache_lookups_total",
                "Verified-token cache lookups by result (hit, miss)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let token_cache_entries = prometheus::IntGauge::new(
            "quay_authz_token_cache_entries",
            "Tokens in the verified-token cache",
        )
        .expect("static metric definition");
        let token_cache_bytes = prometheus::IntGauge::new(
            "quay_authz_token_cache_bytes",
            "Estimated bytes held by the verified-token cache",
        )
        .expect("static metric definition");
        let audit_events_dropped = AUDIT_EVENTS_DROPPED.clone();
        let token_cache_evictions = prometheus::IntCounter::new(
            "quay_authz_token_cache_evictions_total",
            "Entries evicted from the verified-token cache to make room",
        )
        .expect("static metric definition");
        let bridge_mints = IntCounterVec::new(
            Opts::new(
                "quay_authz_bridge_mints_total",
                "Bridge tokens signed for Quay, by source issuer",
            ),
            &["issuer"],
        )
        .expect("static metric definition");
        let bridge_mint_cache = IntCounterVec::new(
            Opts::new(
                "quay_authz_bridge_mint_cache_lookups_total",
                "Bridge mint-cache lookups by result (hit, miss)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let token_revocations = IntCounterVec::new(
            Opts::new(
                "quay_authz_token_revocations_total",
                "Exchanged-token revocations through the admin API, by kind (jti, principal)",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let token_store_up = prometheus::IntGauge::new(
            "quay_authz_token_store_up",
            "1 while the token store (bridge.store) answers, 0 while it does not",
        )
        .expect("static metric definition");
        let token_exchanges = IntCounterVec::new(
            Opts::new(
                "quay_authz_token_exchanges_total",
                "Token exchanges by result (issued, or the refusal's reason code)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let exchanged_tokens_live = prometheus::IntGauge::new(
            "quay_authz_exchanged_tokens_live",
            "Exchanged tokens live (unexpired, unrevoked) in the token store",
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "quay_authz_config_reloads_total",
                "Configuration reloads by result (applied, rejected)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "quay_authz_build_info",
                "Build information: version and git revision (always 1)",
            ),
            &["version", "revision"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_REVISION])
            .set(1);
        for collector in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(check_duration.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(token_cache.clone()),
            Box::new(config_reloads.clone()),
            Box::new(token_cache_entries.clone()),
            Box::new(token_cache_bytes.clone()),
            Box::new(token_cache_evictions.clone()),
            Box::new(audit_events_dropped.clone()),
            Box::new(bridge_mints.clone()),
            Box::new(bridge_mint_cache.clone()),
            Box::new(token_revocations.clone()),
            Box::new(token_store_up.clone()),
            Box::new(token_exchanges.clone()),
            Box::new(exchanged_tokens_live.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            decisions,
            check_duration,
            jwks_fetches,
            jwks_keys,
            token_cache_hits: token_cache.with_label_values(&["hit"]),
            token_cache_misses: token_cache.with_label_values(&["miss"]),
            token_cache,
            config_reloads,
            token_cache_entries,
            token_cache_bytes,
            token_cache_evictions,
            audit_events_dropped,
            bridge_mints,
            bridge_mint_cache,
            token_revocations,
            token_store_up,
            token_exchanges,
            exchanged_tokens_live,
        }
    }

    /// The exposition plus `quay_authz_jwks_key_set_age_seconds` for the key sets published at
    /// scrape time. The gauge is built per scrape rather than registered: a key source dropped
    /// by a reload disappears from it, and concurrent scrapes cannot see each other's values.
    pub fn render_with_key_sets<'a>(
        &self,
        key_sets: impl IntoIterator<Item = KeySetAge<'a>>,
    ) -> String {
        let mut families = self.registry.gather();
        let ages = GaugeVec::new(
            Opts::new(
                KEY_SET_AGE,
                "Seconds since the published key set of each issuer key source was fetched",
            ),
            &["issuer", "source"],
        )
        .expect("static metric definition");
        let mut any = false;
        for key_set in key_sets {
            any = true;
            ages.with_label_values(&[key_set.issuer, key_set.source])
                .set(key_set.age.as_secs_f64());
        }
        if any {
            families.extend(prometheus::core::Collector::collect(&ages));
            families.sort_by(|a, b| a.name().cmp(b.name()));
        }
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&families, &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

// === impl Metrics: metric names ===

impl Metrics {
    /// The name of every registered metric family, sorted; what dashboards and alert rules may
    /// query (histograms add `_bucket`, `_sum` and `_count` to their name).
    ///
    /// `Registry::gather` leaves out families that have no sample yet (a vector before its
    /// first label set), so the names come from each collector's descriptors as well; a new
    /// field belongs in the list below.
    pub fn metric_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 16] = [
            &self.decisions,
            &self.check_duration,
            &self.jwks_fetches,
            &self.jwks_keys,
            &self.token_cache,
            &self.config_reloads,
            &self.token_cache_entries,
            &self.token_cache_bytes,
            &self.token_cache_evictions,
            &self.audit_events_dropped,
            &self.bridge_mints,
            &self.bridge_mint_cache,
            &self.token_revocations,
            &self.token_store_up,
            &self.token_exchanges,
            &self.exchanged_tokens_live,
        ];
        let described = collectors
            .into_iter()
            .flat_map(|collector| collector.desc())
            .map(|desc| desc.fq_name.clone());
        let gathered = self
            .registry
            .gather()
            .into_iter()
            .map(|family| family.name().to_string());
        let mut names: Vec<String> = described.chain(gathered).collect();
        names.sort();
        names.dedup();
        names
    }
}
