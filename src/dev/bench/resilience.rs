//! Resilience figures against a real `quay-authz serve` process and the development issuer:
//! key rotation under load, a flood of tokens with random kids, and the memory of many cached
//! tokens.
//!
//! Usage: `let figures = resilience::measure(&settings, issuer).await?;` then
//! `figures.to_markdown()`. Each scenario starts its own server process (a fresh key cache and
//! token cache, and a clean RSS baseline) on loopback ports and kills it when done.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::dev::bench::loadgen::{
    self, LoadReport, LoadSettings, RequestShape, Workload, join_counts,
};
use crate::dev::issuer::{DevIssuer, DevIssuerError, SigningKeyKind, quickstart_config};

/// How long a started server may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Tokens of the rotation scenario per key (the load cycles through them).
const ROTATION_TOKENS: usize = 64;

/// In the random-kid flood, one token in this many is a valid one.
const FLOOD_VALID_EVERY: usize = 100;

#[derive(Debug, Clone)]
pub struct ResilienceSettings {
    /// The `quay-authz` binary to run.
    pub server_bin: PathBuf,
    /// Tokens in the random-kid flood and in the cache-memory scenario.
    pub tokens: usize,
    pub concurrency: usize,
    pub connections: usize,
    /// Each of the rotation's three phases (old key only, both, new key only).
    pub rotation_phase: Duration,
    /// The server's `jwks.min_refetch_interval_seconds`.
    pub min_refetch_interval_seconds: u64,
}

impl ResilienceSettings {
    pub fn new(server_bin: PathBuf) -> Self {
        Self {
            server_bin,
            tokens: 100_000,
            concurrency: 64,
            connections: 2,
            rotation_phase: Duration::from_secs(4),
            min_refetch_interval_seconds: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResilienceError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the development issuer: {0}")]
    Issuer(#[from] DevIssuerError),
    #[error("load: {0}")]
    Load(#[from] loadgen::LoadError),
    #[error("quay-authz did not become ready: {0}")]
    NotReady(String),
    #[error("HTTP to quay-authz: {0}")]
    Http(#[from] reqwest::Error),
    #[error("a minting task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Every figure of one run.
#[derive(Debug, Clone, Serialize)]
pub struct ResilienceFigures {
    pub rotation: RotationFigures,
    pub flood: FloodFigures,
    pub memory: MemoryFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationFigures {
    pub phase_seconds: f64,
    pub report: LoadReport,
    /// JWKS fetches the issuer answered while the load ran.
    pub jwks_fetches: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodFigures {
    pub tokens: usize,
    pub valid_tokens: usize,
    pub min_refetch_interval_seconds: u64,
    pub report: LoadReport,
    /// Fetches the issuer answered during the flood, and what `/metrics` counted.
    pub issuer_jwks_fetches: u64,
    pub metric_jwks_fetches: u64,
    /// The most fetches the interval allows in the flood's time: one at its start and one per
    /// full interval after.
    pub allowed_fetches: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigures {
    pub tokens: usize,
    pub baseline_rss_kib: u64,
    pub loaded_rss_kib: u64,
    pub peak_rss_kib: u64,
    pub cache_entries: u64,
    pub cache_evictions: u64,
    /// `quay_authz_token_cache_bytes`: the cache's own estimate of what it holds.
    pub cache_bytes: u64,
    pub report: LoadReport,
}

/// Runs the three scenarios, one server process each.
pub async fn measure(
    settings: &ResilienceSettings,
    issuer: Arc<DevIssuer>,
) -> Result<ResilienceFigures, ResilienceError> {
    let rotation = rotation(settings, issuer.clone()).await?;
    let flood = flood(settings, issuer.clone()).await?;
    let memory = memory(settings, issuer).await?;
    Ok(ResilienceFigures {
        rotation,
        flood,
        memory,
    })
}

/// Load with tokens of the current key; the issuer publishes a new key and at once signs
/// with it (the worst case: real IdPs publish ahead of use), while old tokens are still in
/// flight; then only new tokens. Every denial here is one the rotation caused.
async fn rotation(
    settings: &ResilienceSettings,
    issuer: Arc<DevIssuer>,
) -> Result<RotationFigures, ResilienceError> {
    let server = ServerProcess::start(settings, &issuer).await?;
    let shape = RequestShape::default();
    let old = mint_tokens(&issuer, SigningKeyKind::Rsa, ROTATION_TOKENS, 0, |_| None).await?;
    let workload = Arc::new(Workload::new(shape.requests(&old)));
    let load_settings = LoadSettings {
        warmup: Duration::ZERO,
        duration: settings.rotation_phase * 3,
        ..server.load_settings(settings)
    };
    let fetches_before = issuer.jwks_fetches();
    let load = {
        let workload = workload.clone();
        tokio::spawn(async move { loadgen::run(&load_settings, &workload).await })
    };
    tokio::time::sleep(settings.rotation_phase).await;
    issuer.rotate(SigningKeyKind::Rsa)?;
    let new = mint_tokens(
        &issuer,
        SigningKeyKind::Rsa,
        ROTATION_TOKENS,
        ROTATION_TOKENS,
        |_| None,
    )
    .await?;
    let both: Vec<String> = old
        .iter()
        .zip(&new)
        .flat_map(|(old, new)| [old.clone(), new.clone()])
        .collect();
    workload.replace(shape.requests(&both));
    tokio::time::sleep(settings.rotation_phase).await;
    workload.replace(shape.requests(&new));
    let mut report = load.await??;
    report.label = "key rotation under load".into();
    drop(server);
    Ok(RotationFigures {
        phase_seconds: settings.rotation_phase.as_secs_f64(),
        report,
        jwks_fetches: issuer.jwks_fetches() - fetches_before,
    })
}

/// `settings.tokens` Checks, each with a different random kid (one in FLOOD_VALID_EVERY a
/// valid token), sent once each; counts the key-set fetches they caused.
async fn flood(
    settings: &ResilienceSettings,
    issuer: Arc<DevIssuer>,
) -> Result<FloodFigures, ResilienceError> {
    let server = ServerProcess::start(settings, &issuer).await?;
    let hasher = std::hash::RandomState::new();
    let tokens = mint_tokens(
        &issuer,
        SigningKeyKind::Ec,
        settings.tokens,
        0,
        move |index| {
            (index % FLOOD_VALID_EVERY != 0).then(|| {
                use std::hash::BuildHasher;
                format!("random-{:016x}", hasher.hash_one(index))
            })
        },
    )
    .await?;
    let valid_tokens = settings.tokens.div_ceil(FLOOD_VALID_EVERY);
    let metric_before = server.jwks_fetch_metric().await?;
    let issuer_before = issuer.jwks_fetches();
    let report = server
        .send_each_once(settings, &tokens, "random-kid flood")
        .await?;
    let issuer_jwks_fetches = issuer.jwks_fetches() - issuer_before;
    let metric_jwks_fetches = server.jwks_fetch_metric().await? - metric_before;
    let interval = settings.min_refetch_interval_seconds.max(1) as f64;
    Ok(FloodFigures {
        tokens: settings.tokens,
        valid_tokens,
        min_refetch_interval_seconds: settings.min_refetch_interval_seconds,
        allowed_fetches: (report.elapsed_seconds / interval).floor() as u64 + 1,
        report,
        issuer_jwks_fetches,
        metric_jwks_fetches,
    })
}

/// RSS of the server before and after `settings.tokens` distinct valid tokens went through
/// it once each (so each sits in the verified-token cache).
async fn memory(
    settings: &ResilienceSettings,
    issuer: Arc<DevIssuer>,
) -> Result<MemoryFigures, ResilienceError> {
    let server = ServerProcess::start(settings, &issuer).await?;
    let tokens = mint_tokens(&issuer, SigningKeyKind::Ec, settings.tokens, 0, |_| None).await?;
    // Warm the code paths, connections and runtime with the first token before the baseline;
    // it is one of the tokens counted, so the cache ends with exactly `tokens` entries.
    let first = &tokens[..tokens.len().min(1)];
    loadgen::run(
        &LoadSettings {
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            ..server.load_settings(settings)
        },
        &Arc::new(Workload::new(RequestShape::default().requests(first))),
    )
    .await?;
    let baseline_rss_kib = server.status_kib("VmRSS")?;
    let report = server
        .send_each_once(settings, &tokens, "distinct cached tokens")
        .await?;
    let metrics = server.metrics().await?;
    Ok(MemoryFigures {
        tokens: settings.tokens,
        baseline_rss_kib,
        loaded_rss_kib: server.status_kib("VmRSS")?,
        peak_rss_kib: server.status_kib("VmHWM")?,
        cache_entries: metric_sum(&metrics, "quay_authz_token_cache_entries", "") as u64,
        cache_evictions: metric_sum(&metrics, "quay_authz_token_cache_evictions_total", "") as u64,
        cache_bytes: metric_sum(&metrics, "quay_authz_token_cache_bytes", "") as u64,
        report,
    })
}

/// `count` tokens for distinct users in the `acme-developers` group, signed by the newest key
/// of `kind`, on every core. `kid_of(index)` overrides the header's kid.
async fn mint_tokens(
    issuer: &Arc<DevIssuer>,
    kind: SigningKeyKind,
    count: usize,
    first_user: usize,
    kid_of: impl Fn(usize) -> Option<String> + Send + Sync + 'static,
) -> Result<Vec<String>, ResilienceError> {
    let issuer = issuer.clone();
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let now = crate::model::clock::unix_now();
        let mint_one = |index: usize| {
            let claims = user_claims(&issuer, first_user + index, now);
            match kid_of(index) {
                Some(kid) => issuer.mint_with_kid(kind, &claims, &kid),
                None => issuer.mint(kind, &claims),
            }
        };
        let slices: Vec<Result<Vec<String>, DevIssuerError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let mint_one = &mint_one;
                    let range = (count * thread / threads)..(count * (thread + 1) / threads);
                    scope.spawn(move || range.map(mint_one).collect())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or(Err(DevIssuerError::Signing)))
                .collect()
        });
        let mut tokens = Vec::with_capacity(count);
        for slice in slices {
            tokens.extend(slice?);
        }
        Ok(tokens)
    })
    .await?
}

fn user_claims(issuer: &DevIssuer, user: usize, now: u64) -> Value {
    json!({
        "iss": issuer.issuer(), "aud": "quay", "sub": format!("user-{user}"),
        "preferred_username": format!("user-{user}"), "groups": ["acme-developers"],
        "iat": now, "nbf": now, "exp": now + 3600,
    })
}

/// The quickstart's configuration (`quickstart_config`) on the given loopback ports, with
/// `jwks.min_refetch_interval_seconds` set.
pub fn server_config(issuer: &DevIssuer, ports: [u16; 3], min_refetch_interval: u64) -> String {
    let [grpc, http, admin] = ports;
    let config = quickstart_config(issuer)
        .replace("127.0.0.1:9191", &format!("127.0.0.1:{grpc}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:9192", &format!("127.0.0.1:{admin}"));
    format!("{config}jwks:\n  min_refetch_interval_seconds: {min_refetch_interval}\n")
}

/// Sum of every sample of `name` whose labels contain `labels` (empty: all samples), from
/// Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = rest.is_empty() || (rest.starts_with('{') && rest.contains(labels));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A `quay-authz serve` child process, killed when dropped.
struct ServerProcess {
    child: tokio::process::Child,
    grpc_port: u16,
    http_port: u16,
    dir: PathBuf,
    http: reqwest::Client,
}

// === impl ServerProcess ===

impl ServerProcess {
    async fn start(
        settings: &ResilienceSettings,
        issuer: &DevIssuer,
    ) -> Result<Self, ResilienceError> {
        let io = |what: String| move |source: std::io::Error| ResilienceError::Io { what, source };
        let ports = [free_port()?, free_port()?, free_port()?];
        let dir = std::env::temp_dir().join(format!(
            "quay-authz-bench-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            server_config(issuer, ports, settings.min_refetch_interval_seconds),
        )
        .map_err(io(format!("writing {}", config.display())))?;
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        let child = tokio::process::Command::new(&settings.server_bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("QUAY_AUTHZ_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", settings.server_bin.display())))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut server = Self {
            child,
            grpc_port: ports[0],
            http_port: ports[1],
            dir,
            http,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), ResilienceError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("http://127.0.0.1:{}/readyz", self.http_port);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ResilienceError::NotReady(format!(
                    "it exited ({status}); its log: {}",
                    self.log().trim()
                )));
            }
            if let Ok(response) = self.http.get(&url).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ResilienceError::NotReady(format!(
                    "no 200 from {url} within {READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn load_settings(&self, settings: &ResilienceSettings) -> LoadSettings {
        LoadSettings {
            concurrency: settings.concurrency,
            connections: settings.connections,
            ..LoadSettings::new(format!("http://127.0.0.1:{}", self.grpc_port))
        }
    }

    /// Sends each token in one Check, in turn, at the settings' concurrency.
    async fn send_each_once(
        &self,
        settings: &ResilienceSettings,
        tokens: &[String],
        label: &str,
    ) -> Result<LoadReport, ResilienceError> {
        let load_settings = LoadSettings {
            warmup: Duration::ZERO,
            // A hang guard; the run ends when every token was sent.
            duration: Duration::from_secs(3600),
            max_requests: Some(tokens.len() as u64),
            ..self.load_settings(settings)
        };
        let workload = Arc::new(Workload::new(RequestShape::default().requests(tokens)));
        let mut report = loadgen::run(&load_settings, &workload).await?;
        report.label = label.into();
        Ok(report)
    }

    async fn metrics(&self) -> Result<String, ResilienceError> {
        let url = format!("http://127.0.0.1:{}/metrics", self.http_port);
        Ok(self.http.get(url).send().await?.text().await?)
    }

    async fn jwks_fetch_metric(&self) -> Result<u64, ResilienceError> {
        let metrics = self.metrics().await?;
        Ok(metric_sum(&metrics, "quay_authz_jwks_fetches_total", r#"issuer="dev""#) as u64)
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> Result<u64, ResilienceError> {
        let pid = self.child.id().unwrap_or(0);
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).map_err(|source| ResilienceError::Io {
            what: format!("reading {path}"),
            source,
        })?;
        Ok(status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, ResilienceError> {
    // The port is free again once the listener is dropped; the server binds it right after.
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| ResilienceError::Io {
            what: "finding a free loopback port".into(),
            source,
        })?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|source| ResilienceError::Io {
            what: "finding a free loopback port".into(),
            source,
        })
}

// === impl ResilienceFigures ===

impl ResilienceFigures {
    /// The body of BENCHMARKS.md's "Resilience" section (without its heading).
    pub fn to_markdown(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let check = |ok: bool| if ok { "✓" } else { "✗ (missed)" };
        let rotation = &self.rotation;
        let flood = &self.flood;
        let memory = &self.memory;
        let rotation_denials = rotation.report.denials() + rotation.report.errors;
        let flood_fetches = flood.issuer_jwks_fetches;
        let valid_allowed = flood.report.decisions.get("allow").copied().unwrap_or(0);
        // Per entry the cache holds (with a byte bound, fewer than the tokens sent).
        let per_token = if memory.cache_entries > 0 {
            (memory
                .loaded_rss_kib
                .saturating_sub(memory.baseline_rss_kib)
                * 1024) as f64
                / memory.cache_entries as f64
        } else {
            0.0
        };
        let reasons = |report: &LoadReport| {
            join_counts(
                report
                    .reasons
                    .iter()
                    .map(|(reason, count)| (format!("`{reason}`"), count)),
            )
        };
        let mut text = String::new();
        text.push_str("| scenario | measured | goal |\n| --- | --- | --- |\n");
        text.push_str(&format!(
            "| key rotation under load | {rotation_denials} denials or errors in {} Checks; {} JWKS fetch(es) | 0 denials {} |\n",
            rotation.report.requests + rotation.report.errors,
            rotation.jwks_fetches,
            check(rotation_denials == 0),
        ));
        text.push_str(&format!(
            "| {} tokens with random kids | {flood_fetches} JWKS fetch(es) in {:.1} s at `min_refetch_interval_seconds: {}` (at most {} allowed) | ≤ 1 per interval {} |\n",
            flood.tokens,
            flood.report.elapsed_seconds,
            flood.min_refetch_interval_seconds,
            flood.allowed_fetches,
            check(flood_fetches <= flood.allowed_fetches),
        ));
        text.push_str(&format!(
            "| RSS after {} distinct tokens ({} cached) | {:.1} MiB (baseline {:.1} MiB, +{:.0} bytes per cached token; peak {:.1} MiB) | ≤ 64 MiB {} |\n",
            memory.tokens,
            memory.cache_entries,
            mib(memory.loaded_rss_kib),
            mib(memory.baseline_rss_kib),
            per_token,
            mib(memory.peak_rss_kib),
            check(memory.loaded_rss_kib <= 64 * 1024),
        ));
        text.push_str(&format!(
            "\n- **Rotation**: {:.0} s with {ROTATION_TOKENS} RS256 tokens of the current key, then the issuer \
             publishes a new key and signs with it at once (the worst case; real IdPs publish \
             keys ahead of use) while old tokens stay in flight for {:.0} s, then {:.0} s of new \
             tokens only. {} Checks in flight over {} connections; {:.0} rps, p99 {:.0} µs. Answers: {}.\n",
            rotation.phase_seconds,
            rotation.phase_seconds,
            rotation.phase_seconds,
            rotation.report.concurrency,
            rotation.report.connections,
            rotation.report.rps,
            rotation.report.latency.p99_us,
            reasons(&rotation.report),
        ));
        text.push_str(&format!(
            "- **Random kids**: {} ES256 tokens, each once; {} of them (one in {FLOOD_VALID_EVERY}) \
             valid, {valid_allowed} allowed. Fetches counted by the issuer; `/metrics` \
             (`quay_authz_jwks_fetches_total{{issuer=\"dev\"}}`) counted {}. {:.0} rps, p99 {:.0} µs. \
             Answers: {}.\n",
            flood.tokens,
            flood.valid_tokens,
            flood.metric_jwks_fetches,
            flood.report.rps,
            flood.report.latency.p99_us,
            reasons(&flood.report),
        ));
        text.push_str(&format!(
            "- **Memory**: VmRSS of the `quay-authz serve` process from `/proc/PID/status`, \
             baseline after 1 s of load with the first token, then {} distinct valid ES256 \
             tokens (the first included) sent once each; afterwards \
             `quay_authz_token_cache_entries` was {} and `quay_authz_token_cache_evictions_total` {}; \
             the cache's estimate, `quay_authz_token_cache_bytes`, was {:.1} MiB ({} bytes per entry). {:.0} rps (uncached ES256 \
             verification), p99 {:.0} µs.\n",
            memory.tokens,
            memory.cache_entries,
            memory.cache_evictions,
            memory.cache_bytes as f64 / (1024.0 * 1024.0),
            memory.cache_bytes.checked_div(memory.cache_entries).unwrap_or(0),
            memory.report.rps,
            memory.report.latency.p99_us,
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_matching_series() {
        let text = "# HELP x\n\
            quay_authz_jwks_fetches_total{issuer=\"dev\",result=\"success\"} 3\n\
            quay_authz_jwks_fetches_total{issuer=\"dev\",result=\"http_error\"} 2\n\
            quay_authz_jwks_fetches_total{issuer=\"other\",result=\"success\"} 7\n\
            quay_authz_jwks_fetches_total_extra 100\n\
            quay_authz_token_cache_entries 42\n";
        assert_eq!(
            metric_sum(text, "quay_authz_jwks_fetches_total", r#"issuer="dev""#),
            5.0
        );
        assert_eq!(metric_sum(text, "quay_authz_token_cache_entries", ""), 42.0);
    }
}
