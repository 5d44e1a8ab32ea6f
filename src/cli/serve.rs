//! `quay-authz serve --config FILE`: the service. Reloads the file when it changes (and on
//! SIGHUP), and on SIGTERM goes NOT_SERVING and finishes the Checks in flight.

use std::path::PathBuf;
use std::process::ExitCode;

use quay_authz::config::Config;

use super::shutdown_signal;

pub async fn run(config_path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    let running = quay_authz::server::start(config).await?;
    let watcher = tokio::spawn(quay_authz::server::watch_config(
        running.service.clone(),
        config_path,
    ));
    shutdown_signal().await;
    watcher.abort();
    // The grace of the configuration serving now (a reload may have changed it).
    let grace = running.service.pipeline.load().config.shutdown_grace;
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "shutting down: NOT_SERVING, finishing in-flight Checks"
    );
    if running.shutdown_within(grace).await {
        tracing::info!("shut down cleanly");
    } else {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "Checks still in flight at the end of shutdown_grace_seconds were dropped"
        );
    }
    Ok(ExitCode::SUCCESS)
}
