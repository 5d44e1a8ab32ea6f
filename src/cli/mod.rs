//! The binary's edge: one file per subcommand, each a `run` that the `main` dispatch calls.
//! `anyhow` lives here and in `main.rs` only; the library reports typed errors.

pub mod check_config;
pub mod config_schema;
pub mod dev;
pub mod explain;
pub mod serve;
pub mod tokens;

use std::time::Duration;

use quay_authz::server::admin::proto::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

/// Connects to a running instance's admin API (`explain --server`, `tokens`): `host:port` or
/// a URL. The error says where it tried and what to check; the admin listener is loopback-only,
/// so from elsewhere it is reached through the pod (`kubectl exec` / `port-forward`).
pub async fn admin_client(server: &str) -> anyhow::Result<AdminClient<Channel>> {
    let address = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let unreachable = |why: String| {
        anyhow::anyhow!(
            "cannot reach the admin API at {address}: {why} (is quay-authz running with \
             listen.admin there? It listens on loopback only: run this on the same host or in \
             the pod)"
        )
    };
    let endpoint = Endpoint::from_shared(address.clone())
        .map_err(|error| unreachable(error.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|error| {
        // tonic's own message is only "transport error"; its causes say what happened
        // ("tcp connect error: Connection refused (os error 111)").
        let mut causes = Vec::new();
        let mut cause = std::error::Error::source(&error);
        while let Some(source) = cause {
            causes.push(source.to_string());
            cause = source.source();
        }
        causes.dedup();
        unreachable(if causes.is_empty() {
            error.to_string()
        } else {
            causes.join(": ")
        })
    })?;
    Ok(AdminClient::new(channel))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
