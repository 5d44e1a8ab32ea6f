//! The binary's edge: one file per subcommand, each a `run` that the `main` dispatch calls.
//! `anyhow` lives here and in `main.rs` only; the library reports typed errors.

pub mod check_config;
pub mod config_schema;
pub mod dev;
pub mod explain;
pub mod serve;

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
