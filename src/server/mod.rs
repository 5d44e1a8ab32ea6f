//! Server: the gRPC listener (ext_authz `Check` and `grpc.health.v1`, plaintext or TLS/mTLS
//! with `listen.grpc_tls`), the HTTP listener (`/metrics`, `/healthz`, `/readyz`, and the
//! identity bridge's discovery document and JWKS when `bridge:` is set), and the
//! loopback admin API (`admin`). HTTP and admin are always plaintext.
//!
//! Usage: `let running = server::start(config).await?;` binds every listener (port 0 works:
//! `running.grpc_addr` tells the real one), serves in the background, and
//! `running.shutdown().await` stops gracefully (health NOT_SERVING first, in-flight Checks
//! finish).

pub mod admin;
mod bridge;
mod exchange;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::check::pipeline::Pipeline;
use crate::config::Config;
use crate::config::bridge::StoreLocation;
use crate::jwks::KeyStore;
use crate::metrics::Metrics;
use crate::store::{StoreHealth, TokenStore};

/// Shared state of a running instance. The pipeline sits behind an ArcSwap so a reload can
/// replace it without blocking Checks.
pub struct Service {
    pub pipeline: ArcSwap<Pipeline>,
    pub key_store: KeyStore,
    pub metrics: Metrics,
    /// Token exchange's live-token index, revocation list and mint counters (`bridge.store`):
    /// opened once at startup and kept across reloads, so a reload forgets no revocation.
    pub token_store: Arc<TokenStore>,
}

impl Service {
    pub fn new(config: Config) -> Arc<Self> {
        let metrics = Metrics::new();
        let key_store = KeyStore::new(config.jwks.clone(), metrics.clone());
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let token_store = Arc::new(TokenStore::open(&store_location(&config)));
        let pipeline = Pipeline::new(Arc::new(config), &key_store, metrics.clone())
            .with_token_store(token_store.clone());
        Arc::new(Self {
            pipeline: ArcSwap::from_pointee(pipeline),
            key_store,
            metrics,
            token_store,
        })
    }

    pub fn ready(&self) -> bool {
        self.pipeline.load().ready()
    }

    /// Swaps in a new configuration: it was validated whole (`Config::load`/`parse`) before it
    /// gets here; key sources whose location and trust settings did not change are reused with
    /// their keys, under the new issuer name and `jwks` settings (`KeyStore::bind`); Checks in
    /// flight finish on the pipeline they started with.
    pub fn apply(&self, config: Config) {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let kept = needs_restart(&self.pipeline.load().config, &config);
        if !kept.is_empty() {
            tracing::warn!(
                "changed settings that only take effect at a restart, the running values stay: {}",
                kept.join(", ")
            );
        }
        let pipeline = Pipeline::new(Arc::new(config), &self.key_store, self.metrics.clone())
            .with_token_store(self.token_store.clone());
        self.pipeline.store(Arc::new(pipeline));
        self.key_store.prune(&self.pipeline.load().config);
        self.metrics
            .config_reloads
            .with_label_values(&["applied"])
            .inc();
    }

    /// Reloads from a file; a configuration with any error is rejected and the old one keeps
    /// serving.
    pub fn reload(&self, path: &std::path::Path) -> Result<(), crate::config::ConfigError> {
        match Config::load(path) {
            Ok(config) => {
                self.apply(config);
                tracing::info!(path = %path.display(), "configuration reloaded");
                Ok(())
            }
            Err(error) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(path = %path.display(), "configuration rejected, the previous one keeps serving:\n{error}");
                Err(error)
            }
        }
    }
}

/// The settings read once at startup (listeners bound, TLS file paths watched) that differ
/// between `old` and `new`: a reload cannot apply them. (`jwks` settings apply at a reload.)
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let tls_files = |config: &Config| config.listen.grpc_tls.as_ref().map(|tls| tls.files.clone());
    [
        ("listen.grpc", old.listen.grpc != new.listen.grpc),
        ("listen.http", old.listen.http != new.listen.http),
        ("listen.admin", old.listen.admin != new.listen.admin),
        ("listen.grpc_tls", tls_files(old) != tls_files(new)),
        ("bridge.store", store_location(old) != store_location(new)),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// `bridge.store` (memory without a bridge: nothing is exchanged then).
fn store_location(config: &Config) -> StoreLocation {
    config
        .bridge
        .as_ref()
        .map_or(StoreLocation::Memory, |bridge| bridge.store.clone())
}

/// Reloads on SIGHUP and when the file's modification time or size changes (polled, so it
/// works for Kubernetes ConfigMap symlink swaps too). Runs until the process ends.
pub async fn watch_config(service: Arc<Service>, path: std::path::PathBuf) {
    let fingerprint = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|meta| (meta.modified().ok(), meta.len()))
    };
    let mut last = fingerprint(&path);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let by_signal = tokio::select! {
            _ = signalled => true,
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
        };
        let now = fingerprint(&path);
        if by_signal || now != last {
            last = now;
            let _ = service.reload(&path);
        }
    }
}

struct AuthorizationService {
    service: Arc<Service>,
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let pipeline = self.service.pipeline.load_full();
        Ok(tonic::Response::new(
            pipeline.check(request.get_ref()).await,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A running instance.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub service: Arc<Service>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Graceful stop: report NOT_SERVING, stop accepting, let in-flight requests finish
    /// within 10 s.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(10)).await;
    }

    /// Graceful stop with a deadline for the requests in flight (`shutdown_grace_seconds`).
    /// Returns false if some had not finished by then.
    pub async fn shutdown_within(self, grace: Duration) -> bool {
        let _ = self.stop.send(true);
        let all = futures::future::join_all(self.tasks);
        tokio::time::timeout(grace, all).await.is_ok()
    }
}

/// Binds a listener and reports the address it really got (port 0 picks one).
async fn bind(
    what: &'static str,
    address: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ServeError> {
    let error = |source| ServeError::Bind {
        what,
        address,
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// Binds every listener and serves in the background.
pub async fn start(config: Config) -> Result<RunningServer, ServeError> {
    let (grpc_listener, grpc_addr) = bind("grpc", config.listen.grpc).await?;
    let (http_listener, http_addr) = bind("http", config.listen.http).await?;
    let (admin_listener, admin_addr) = bind("admin", config.listen.admin).await?;
    let grpc_tls = config.listen.grpc_tls.clone();
    let grpc_security = match &grpc_tls {
        None => "plaintext",
        Some(tls) if tls.files.client_ca_file.is_some() => "mTLS",
        Some(_) => "TLS",
    };
    let service = Service::new(config);
    let (stop, stop_signal) = watch::channel(false);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health_task = {
        let service = service.clone();
        let mut stop_signal = stop_signal.clone();
        tokio::spawn(async move {
            // grpc.health.v1 follows readiness: SERVING once required issuers have keys.
            let mut last = None;
            loop {
                let status = if *stop_signal.borrow() {
                    ServingStatus::NotServing
                } else if service.ready() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if last != Some(status) {
                    health_reporter.set_service_status("", status).await;
                    health_reporter
                        .set_service_status("envoy.service.auth.v3.Authorization", status)
                        .await;
                    last = Some(status);
                }
                if *stop_signal.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop_signal.changed() => {}
                }
            }
        })
    };

    let grpc_task = {
        let authorization = AuthorizationServer::new(AuthorizationService {
            service: service.clone(),
        });
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(authorization);
        match grpc_tls {
            None => {
                let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
                spawn_grpc("gRPC", router, incoming, stop_signal.clone())
            }
            Some(loaded) => {
                let identity = Arc::new(crate::tls::ReloadingServerConfig::new(loaded));
                // Ends with the stop signal; new handshakes pick up rotated files.
                tokio::spawn(identity.clone().watch(stop_signal.clone()));
                let incoming = crate::tls::incoming(grpc_listener, identity);
                spawn_grpc("gRPC (TLS)", router, incoming, stop_signal.clone())
            }
        }
    };

    let http_task = {
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz_handler))
            .fallback(exchange::fallback)
            .with_state(service.clone());
        let mut stop_signal = stop_signal.clone();
        tokio::spawn(async move {
            let result = axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_signal.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "HTTP server stopped");
            }
        })
    };

    let admin_task = {
        let admin = crate::server::admin::proto::admin_server::AdminServer::new(
            crate::server::admin::AdminService {
                service: service.clone(),
            },
        );
        let router = tonic::transport::Server::builder().add_service(admin);
        spawn_grpc(
            "admin",
            router,
            TcpIncoming::from(admin_listener),
            stop_signal.clone(),
        )
    };

    let bridge_keys_task = tokio::spawn(bridge::watch_keys(service.clone(), stop_signal.clone()));
    let token_store_task = tokio::spawn(watch_token_store(service.clone(), stop_signal.clone()));

    tracing::info!(%grpc_addr, %http_addr, %admin_addr, grpc = grpc_security, "quay-authz serving");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        admin_addr,
        service,
        stop,
        tasks: vec![
            grpc_task,
            http_task,
            admin_task,
            health_task,
            bridge_keys_task,
            token_store_task,
        ],
    })
}

/// Serves a gRPC router on a stream of connections (plain TCP or established TLS) until the
/// stop signal, logging why it stopped if it fails.
fn spawn_grpc<Incoming, Connection, AcceptError>(
    what: &'static str,
    router: tonic::transport::server::Router,
    incoming: Incoming,
    mut stop_signal: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    Incoming: futures::Stream<Item = Result<Connection, AcceptError>> + Send + 'static,
    Connection: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    AcceptError: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    tokio::spawn(async move {
        let result = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_signal.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "{what} server stopped");
        }
    })
}

async fn metrics_handler(
    State(service): State<Arc<Service>>,
) -> ([(&'static str, &'static str); 1], String) {
    // The live-token gauge is read from the store at scrape time too: revocations and
    // expiries change it without an exchange.
    if let Ok(live) = service
        .token_store
        .live_count(crate::model::clock::unix_now())
        .await
    {
        service
            .metrics
            .exchanged_tokens_live
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }
    let pipeline = service.pipeline.load();
    let key_sets = pipeline.key_sources().filter_map(|(issuer, source)| {
        let key_set = source.current()?;
        Some(crate::metrics::KeySetAge {
            issuer,
            source: source.config.location.url(),
            age: key_set.fetched_at.elapsed(),
        })
    });
    (
        [("content-type", "text/plain; version=0.0.4")],
        service.metrics.render_with_key_sets(key_sets),
    )
}

async fn readyz_handler(State(service): State<Arc<Service>>) -> (StatusCode, String) {
    let pipeline = service.pipeline.load();
    // The token store is reported but never makes the instance unready: IdP tokens and inline
    // bridge tokens do not need it, and only exchanged tokens fail closed without it
    // (`revocation_unavailable`). Its state is the last ping's, so /readyz never waits on Redis.
    let store = store_line(&service.token_store);
    if pipeline.ready() {
        return (StatusCode::OK, format!("ready\n{store}"));
    }
    let mut waiting = String::from("not ready: waiting for keys of required issuers\n");
    for (issuer, source) in pipeline.key_sources() {
        if !source.has_keys() {
            let status = source.status();
            waiting.push_str(&format!(
                "- {issuer} ({}): {}\n",
                source.config.location.url(),
                status
                    .last_error
                    .as_deref()
                    .unwrap_or("first fetch in progress")
            ));
        }
    }
    waiting.push_str(&store);
    (StatusCode::SERVICE_UNAVAILABLE, waiting)
}

/// `token store: memory (answering)`, or `token store: redis at redis://HOST:PORT/DB (…)`
/// (never its password) with whether it answers.
fn store_line(store: &TokenStore) -> String {
    let location = match store.kind() {
        "memory" => "memory".to_string(),
        kind => format!("{kind} at {}", store.location()),
    };
    match store.health() {
        StoreHealth::Up => format!("token store: {location} (answering)\n"),
        StoreHealth::Unknown => format!("token store: {location} (not checked yet)\n"),
        StoreHealth::Down(detail) => format!(
            "token store: {location} (not answering: {detail}; exchanged tokens are refused \
             with revocation_unavailable, other tokens are unaffected)\n"
        ),
    }
}

/// How often the token store is pinged for `/readyz`, the `quay_authz_token_store_up` gauge
/// and the log line when Redis goes away or comes back (logged once each, by the store).
const STORE_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Pings a Redis token store until the stop signal; a memory store always answers.
async fn watch_token_store(service: Arc<Service>, mut stop_signal: watch::Receiver<bool>) {
    loop {
        let up = service.token_store.ping().await.is_ok();
        service.metrics.token_store_up.set(i64::from(up));
        if service.token_store.kind() == "memory" || *stop_signal.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(STORE_PING_INTERVAL) => {}
            _ = stop_signal.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Config {
        let text = format!(
            "quay: {{service: q, realm: \"https://q/v2/auth\"}}\n\
             issuers: [{{name: k, issuer: \"https://idp\", audiences: [quay]}}]\n{extra}"
        );
        Config::parse(&text, "test").expect("config")
    }

    #[test]
    fn needs_restart_names_the_startup_settings_that_changed() {
        let old = parse("");
        assert!(needs_restart(&old, &parse("")).is_empty());
        let new = parse(
            "listen:\n  grpc: 127.0.0.1:1\n  http: 0.0.0.0:9090\n  admin: 127.0.0.1:9192\n\
             jwks:\n  fetch_timeout_seconds: 1\n",
        );
        assert_eq!(needs_restart(&old, &new), ["listen.grpc"]);
    }
}
