//! A closed-loop gRPC load generator for ext_authz `Check`.
//!
//! Usage:
//! ```ignore
//! let workload = Workload::new(RequestShape::default().requests(&tokens));
//! let report = run(&LoadSettings::new("http://127.0.0.1:9191"), &workload).await?;
//! println!("{}", report.to_text());
//! ```
//!
//! `concurrency` workers share `connections` HTTP/2 connections (worker i uses connection
//! i mod n); each worker sends one Check, waits for the answer and sends the next, so at most
//! `concurrency` streams are in flight. Requests are taken from the workload in turn, one
//! shared counter for all workers, so a list of N tokens is cycled evenly. Latency is measured
//! per Check from just before the call to the decoded answer, into an HDR histogram with three
//! significant digits; requests started during the warm-up are sent but not recorded.
//!
//! A closed loop measures what the server sustains at that concurrency; it does not model an
//! open stream of arrivals, so queueing delay beyond the `concurrency` in flight is not seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

/// Highest latency the histogram tracks (larger values are clamped to it).
const MAX_TRACKED_NANOS: u64 = 60_000_000_000;

/// How the load is applied.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The server, `http://host:port`.
    pub target: String,
    /// HTTP/2 connections the workers share.
    pub connections: usize,
    /// Checks in flight at any time (one per worker).
    pub concurrency: usize,
    /// Load before measuring starts (connections warm, caches filled).
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub duration: Duration,
    /// Stop after this many Checks in total (warm-up included), if sooner than `duration`.
    pub max_requests: Option<u64>,
    /// Deadline of one Check; one that passes it counts as an error.
    pub request_timeout: Duration,
    /// The server's process id (same machine, Linux): its CPU time over the measured window
    /// is reported per Check, which separates what the server spends from what the load
    /// generator and the kernel take of shared cores.
    pub server_pid: Option<u32>,
}

impl LoadSettings {
    /// 64 Checks in flight over 2 connections, 2 s warm-up, 10 s measured.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            connections: 2,
            concurrency: 64,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            max_requests: None,
            request_timeout: Duration::from_secs(5),
            server_pid: None,
        }
    }
}

/// What each CheckRequest looks like apart from its token: what Envoy sends for a request.
#[derive(Debug, Clone)]
pub struct RequestShape {
    pub method: String,
    pub path: String,
    pub host: String,
}

impl Default for RequestShape {
    /// A registry manifest pull, the most frequent request a registry sees.
    fn default() -> Self {
        Self {
            method: "GET".into(),
            path: "/v2/acme/app/manifests/latest".into(),
            host: "quay.example.com".into(),
        }
    }
}

impl RequestShape {
    /// One CheckRequest per token, with the headers Envoy forwards for such a request.
    pub fn requests(&self, tokens: &[String]) -> Vec<CheckRequest> {
        tokens.iter().map(|token| self.request(token)).collect()
    }

    pub fn request(&self, token: &str) -> CheckRequest {
        let headers = HashMap::from([
            (":authority".to_string(), self.host.clone()),
            (":method".to_string(), self.method.clone()),
            (":path".to_string(), self.path.clone()),
            ("authorization".to_string(), format!("Bearer {token}")),
            (
                "user-agent".to_string(),
                "docker/27.0 go/go1.22".to_string(),
            ),
            ("x-forwarded-proto".to_string(), "https".to_string()),
            (
                "x-request-id".to_string(),
                "3f0e8e52-6d43-4c3e-9a57-7f4b2d1c0a11".to_string(),
            ),
        ]);
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: self.method.clone(),
                        path: self.path.clone(),
                        host: self.host.clone(),
                        scheme: "https".into(),
                        protocol: "HTTP/1.1".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }
}

/// Reads tokens, one per line; blank lines and a `Bearer ` prefix are ignored.
pub fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.trim().trim_start_matches("Bearer ").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// The requests the workers cycle through. `replace` swaps them while load runs (a key
/// rotation switching to tokens signed by the new key).
pub struct Workload {
    requests: ArcSwap<Vec<CheckRequest>>,
    issued: AtomicU64,
}

// === impl Workload ===

impl Workload {
    pub fn new(requests: Vec<CheckRequest>) -> Self {
        Self {
            requests: ArcSwap::from_pointee(requests),
            issued: AtomicU64::new(0),
        }
    }

    pub fn replace(&self, requests: Vec<CheckRequest>) {
        self.requests.store(Arc::new(requests));
    }

    /// The next request in turn, or None once `limit` requests were handed out.
    fn next(&self, limit: Option<u64>) -> Option<CheckRequest> {
        let sequence = self.issued.fetch_add(1, Ordering::Relaxed);
        if limit.is_some_and(|limit| sequence >= limit) {
            return None;
        }
        let requests = self.requests.load();
        let count = requests.len() as u64;
        if count == 0 {
            return None;
        }
        requests.get((sequence % count) as usize).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid target {target}: {source}")]
    Target {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("the workload has no requests")]
    EmptyWorkload,
    #[error("a worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// A name for the run (`--label`), used when runs are compared.
    pub label: String,
    pub target: String,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup_seconds: f64,
    /// Measured time: from the end of the warm-up to the last answer.
    pub elapsed_seconds: f64,
    /// Checks answered in the measured time (errors excluded).
    pub requests: u64,
    /// Checks that failed (transport error, gRPC status, timeout) in the measured time.
    pub errors: u64,
    pub rps: f64,
    pub latency: Latency,
    /// Answers by decision: quay-authz's `decision` metadata (`allow`, `deny`,
    /// `passthrough`); a server that sets none is counted by its status (`ok`, `denied`).
    pub decisions: BTreeMap<String, u64>,
    /// Answers by `decision/reason` where the server says why.
    pub reasons: BTreeMap<String, u64>,
    /// The first error seen, as a hint (gRPC status and message; never a token).
    pub first_error: Option<String>,
    /// With `server_pid`: the server's CPU time (user + system) over the measured window,
    /// divided by the Checks answered in it, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_check: Option<f64>,
}

/// What one worker saw during the measured time.
struct Tally {
    histogram: Histogram<u64>,
    errors: u64,
    decisions: BTreeMap<String, u64>,
    reasons: BTreeMap<String, u64>,
    first_error: Option<String>,
    last_answer: Option<Instant>,
}

// === impl Tally ===

impl Tally {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_NANOS, 3)
                .expect("constant histogram bounds are valid"),
            errors: 0,
            decisions: BTreeMap::new(),
            reasons: BTreeMap::new(),
            first_error: None,
            last_answer: None,
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<CheckResponse, tonic::Status>) {
        match outcome {
            Ok(response) => {
                let nanos = latency.as_nanos().min(u128::from(MAX_TRACKED_NANOS));
                self.histogram.saturating_record(nanos as u64);
                let (decision, reason) = classify(&response);
                if let Some(reason) = reason {
                    *self
                        .reasons
                        .entry(format!("{decision}/{reason}"))
                        .or_default() += 1;
                }
                *self.decisions.entry(decision).or_default() += 1;
            }
            Err(status) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{:?}: {}", status.code(), status.message()));
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.errors += other.errors;
        for (key, count) in other.decisions {
            *self.decisions.entry(key).or_default() += count;
        }
        for (key, count) in other.reasons {
            *self.reasons.entry(key).or_default() += count;
        }
        self.first_error = self.first_error.take().or(other.first_error);
        self.last_answer = self.last_answer.max(other.last_answer);
    }
}

/// The decision and reason quay-authz writes into the dynamic metadata; without one, the
/// status code says whether the request was let through.
pub fn classify(response: &CheckResponse) -> (String, Option<String>) {
    let field = |name: &str| {
        response
            .dynamic_metadata
            .as_ref()
            .and_then(|metadata| metadata.fields.get(name))
            .and_then(|value| match &value.kind {
                Some(Kind::StringValue(text)) => Some(text.clone()),
                _ => None,
            })
    };
    match field("decision") {
        Some(decision) => (decision, field("reason")),
        None => {
            let ok = response
                .status
                .as_ref()
                .is_none_or(|status| status.code == 0);
            (if ok { "ok" } else { "denied" }.to_string(), None)
        }
    }
}

/// Connects, runs the warm-up and the measured time, and reports.
pub async fn run(
    settings: &LoadSettings,
    workload: &Arc<Workload>,
) -> Result<LoadReport, LoadError> {
    if workload.requests.load().is_empty() {
        return Err(LoadError::EmptyWorkload);
    }
    let endpoint = Endpoint::from_shared(settings.target.clone())
        .map_err(|source| LoadError::Target {
            target: settings.target.clone(),
            source,
        })?
        .tcp_nodelay(true)
        .timeout(settings.request_timeout);
    let mut channels = Vec::new();
    for _ in 0..settings.connections.max(1) {
        // `connect` on a fresh Endpoint opens its own HTTP/2 connection.
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| LoadError::Connect {
                target: settings.target.clone(),
                source,
            })?;
        channels.push(channel);
    }

    let started = Instant::now();
    let measure_from = started + settings.warmup;
    let stop_at = measure_from + settings.duration;
    let mut workers = Vec::new();
    for index in 0..settings.concurrency.max(1) {
        let client = AuthorizationClient::new(channels[index % channels.len()].clone());
        let workload = workload.clone();
        let limit = settings.max_requests;
        workers.push(tokio::spawn(worker(
            client,
            workload,
            limit,
            measure_from,
            stop_at,
        )));
    }
    // The server's CPU clock as the measured window opens; read again once the workers are
    // done (the window closes with the last answer).
    let cpu_at_start = settings.server_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            process_cpu(pid)
        })
    });
    let mut total = Tally::new();
    for handle in workers {
        total.merge(handle.await?);
    }
    let elapsed = total
        .last_answer
        .map(|at| at.saturating_duration_since(measure_from))
        .unwrap_or_default();
    let mut report = report(settings, total, elapsed);
    if let (Some(pid), Some(cpu_at_start)) = (settings.server_pid, cpu_at_start)
        && let Some(from) = cpu_at_start.await?
        && let Some(to) = process_cpu(pid)
        && report.requests > 0
    {
        let cpu = to.saturating_sub(from);
        report.server_cpu_us_per_check = Some(cpu.as_secs_f64() * 1e6 / report.requests as f64);
    }
    Ok(report)
}

/// User + system CPU time a process has used so far (`/proc/PID/stat`, fields 14 and 15, in
/// clock ticks of 1/100 s, as Linux reports them to user space); None if it cannot be read.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let total = ticks(11)? + ticks(12)?;
    Some(Duration::from_millis(total * 10))
}

async fn worker(
    mut client: AuthorizationClient<Channel>,
    workload: Arc<Workload>,
    limit: Option<u64>,
    measure_from: Instant,
    stop_at: Instant,
) -> Tally {
    let mut tally = Tally::new();
    loop {
        let sent = Instant::now();
        if sent >= stop_at {
            break;
        }
        let Some(request) = workload.next(limit) else {
            break;
        };
        let outcome = client.check(request).await.map(tonic::Response::into_inner);
        let answered = Instant::now();
        if sent >= measure_from {
            tally.record(answered - sent, outcome);
            tally.last_answer = Some(answered);
        }
    }
    tally
}

fn report(settings: &LoadSettings, tally: Tally, elapsed: Duration) -> LoadReport {
    let histogram = &tally.histogram;
    let micros = |nanos: u64| nanos as f64 / 1_000.0;
    let requests = histogram.len();
    let elapsed_seconds = elapsed.as_secs_f64();
    LoadReport {
        label: String::new(),
        target: settings.target.clone(),
        concurrency: settings.concurrency,
        connections: settings.connections,
        warmup_seconds: settings.warmup.as_secs_f64(),
        elapsed_seconds,
        requests,
        errors: tally.errors,
        rps: if elapsed_seconds > 0.0 {
            requests as f64 / elapsed_seconds
        } else {
            0.0
        },
        latency: Latency {
            mean_us: histogram.mean() / 1_000.0,
            p50_us: micros(histogram.value_at_quantile(0.50)),
            p99_us: micros(histogram.value_at_quantile(0.99)),
            p999_us: micros(histogram.value_at_quantile(0.999)),
            max_us: micros(histogram.max()),
        },
        decisions: tally.decisions,
        reasons: tally.reasons,
        first_error: tally.first_error,
        server_cpu_us_per_check: None,
    }
}

// === impl LoadReport ===

impl LoadReport {
    /// A few lines for a person at a terminal.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        if !self.label.is_empty() {
            text.push_str(&format!("{}\n", self.label));
        }
        text.push_str(&format!(
            "target {}: {} in flight over {} connection(s), \
             {:.1} s measured after {:.1} s warm-up\n",
            self.target,
            self.concurrency,
            self.connections,
            self.elapsed_seconds,
            self.warmup_seconds
        ));
        text.push_str(&format!(
            "  {:.0} rps, {} answered, {} errors\n",
            self.rps, self.requests, self.errors
        ));
        let l = &self.latency;
        text.push_str(&format!(
            "  latency µs: p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}  mean {:.1}\n",
            l.p50_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
        ));
        if let Some(cpu) = self.server_cpu_us_per_check {
            text.push_str(&format!("  server CPU per Check: {cpu:.1} µs\n"));
        }
        text.push_str(&format!("  decisions: {}\n", join_counts(&self.decisions)));
        if !self.reasons.is_empty() {
            text.push_str(&format!("  reasons: {}\n", join_counts(&self.reasons)));
        }
        if let Some(error) = &self.first_error {
            text.push_str(&format!("  first error: {error}\n"));
        }
        text
    }

    /// Answers whose decision is `deny` (or a bare non-OK status).
    pub fn denials(&self) -> u64 {
        self.decisions.get("deny").copied().unwrap_or(0)
            + self.decisions.get("denied").copied().unwrap_or(0)
    }
}

/// `name count, name count, …`, in the iterator's order.
pub fn join_counts<K: std::fmt::Display>(
    counts: impl IntoIterator<Item = (K, impl std::fmt::Display)>,
) -> String {
    counts
        .into_iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use envoy_types::pb::google::rpc::Status;

    #[test]
    fn a_process_cpu_time_is_read_and_grows_with_work() {
        let pid = std::process::id();
        let before = process_cpu(pid).expect("this process's CPU time");
        // Spin until the clock (1/100 s ticks) has moved.
        let started = std::time::Instant::now();
        let mut spins = 0u64;
        while process_cpu(pid).expect("CPU time") <= before {
            spins = std::hint::black_box(spins + 1);
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "CPU time never moved"
            );
        }
        assert!(process_cpu(u32::MAX).is_none(), "no such process");
    }

    fn with_metadata(fields: &[(&str, &str)]) -> CheckResponse {
        CheckResponse {
            dynamic_metadata: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(name, value)| {
                        (
                            name.to_string(),
                            Value {
                                kind: Some(Kind::StringValue(value.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn classify_reads_metadata_then_status() {
        assert_eq!(
            classify(&with_metadata(&[
                ("decision", "deny"),
                ("reason", "unknown_key")
            ])),
            ("deny".into(), Some("unknown_key".into()))
        );
        assert_eq!(classify(&CheckResponse::default()), ("ok".into(), None));
        let refused = CheckResponse {
            status: Some(Status {
                code: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(classify(&refused), ("denied".into(), None));
    }

    #[test]
    fn tokens_file_lines_are_trimmed_and_blank_lines_skipped() {
        assert_eq!(
            parse_tokens("a.b.c\n\n  Bearer d.e.f  \n"),
            vec!["a.b.c".to_string(), "d.e.f".to_string()]
        );
    }

    #[test]
    fn workload_cycles_and_stops_at_the_limit() {
        let shape = RequestShape::default();
        let workload = Workload::new(shape.requests(&["one".into(), "two".into()]));
        let bearer = |request: Option<CheckRequest>| {
            request
                .and_then(|r| r.attributes)
                .and_then(|a| a.request)
                .and_then(|r| r.http)
                .and_then(|h| h.headers.get("authorization").cloned())
        };
        assert_eq!(
            bearer(workload.next(Some(3))).as_deref(),
            Some("Bearer one")
        );
        assert_eq!(
            bearer(workload.next(Some(3))).as_deref(),
            Some("Bearer two")
        );
        assert_eq!(
            bearer(workload.next(Some(3))).as_deref(),
            Some("Bearer one")
        );
        assert_eq!(bearer(workload.next(Some(3))), None);
    }
}
