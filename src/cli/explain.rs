//! `quay-authz explain`: the full decision for one token and one request, step by step —
//! offline with a configuration (keys fetched, or `--jwks-file`), or asked of a running
//! instance's admin API (`--server`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use quay_authz::authn::extract::RequestFacts;
use quay_authz::check::explain::Explanation;
use quay_authz::check::pipeline::Pipeline;
use quay_authz::config::Config;
use quay_authz::jwks::KeyStore;
use quay_authz::metrics::Metrics;
use quay_authz::server::admin::proto::ExplainRequest;

#[derive(Args)]
pub struct ExplainArgs {
    /// Configuration (offline mode); its issuers' keys are fetched unless --jwks-file.
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    /// Ask a running instance's admin API (host:port) instead, with its live keys.
    #[arg(long, conflicts_with_all = ["config", "jwks_file"])]
    server: Option<String>,
    /// The token (visible to other local users in the process list: prefer --token-file).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the token; `-` reads standard input.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long)]
    path: String,
    /// Request body (for POST /api/v1/repository).
    #[arg(long)]
    body: Option<String>,
    /// A JWKS document used for every issuer instead of fetching keys (fully offline).
    #[arg(long)]
    jwks_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let ExplainArgs {
        config,
        server,
        token,
        token_file,
        method,
        path,
        body,
        jwks_file,
        json,
    } = args;
    let token = read_token(token, token_file.as_deref())?;
    let explanation = match server {
        Some(server) => explain_remote(&server, method, path, token, body).await?,
        None => {
            let Some(config_path) = config else {
                anyhow::bail!("--config or --server is required");
            };
            let config = match Config::load(&config_path) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{error}");
                    return Ok(ExitCode::from(2));
                }
            };
            explain_offline(config, jwks_file.as_deref(), method, path, token, body).await?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", explanation.to_text());
    }
    Ok(if explanation.decision == "deny" {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn read_token(token: Option<String>, token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let text = match (token, token_file) {
        (Some(token), _) => token,
        (None, Some(path)) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the token from stdin")?;
            text
        }
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    let token = text.trim().trim_start_matches("Bearer ").trim().to_string();
    Ok((!token.is_empty()).then_some(token))
}

async fn explain_offline(
    config: Config,
    jwks_file: Option<&Path>,
    method: String,
    path: String,
    token: Option<String>,
    body: Option<String>,
) -> anyhow::Result<Explanation> {
    let metrics = Metrics::new();
    let key_store = KeyStore::new(config.jwks.clone(), metrics.clone());
    if let Some(jwks_file) = jwks_file {
        let document =
            std::fs::read(jwks_file).with_context(|| format!("reading {}", jwks_file.display()))?;
        for issuer in &config.issuers {
            for source in &issuer.key_sources {
                key_store
                    .preload(&issuer.name, source, &document)
                    .map_err(|why| anyhow::anyhow!("{}: {why}", jwks_file.display()))?;
            }
        }
    }
    let pipeline = Pipeline::new(Arc::new(config), &key_store, metrics);
    let facts = RequestFacts::described(method, path, token, body);
    Ok(
        quay_authz::check::explain::explain(
            &pipeline,
            &facts,
            quay_authz::model::clock::unix_now(),
        )
        .await,
    )
}

async fn explain_remote(
    server: &str,
    method: String,
    path: String,
    token: Option<String>,
    body: Option<String>,
) -> anyhow::Result<Explanation> {
    let mut client = super::admin_client(server).await?;
    let response = client
        .explain(ExplainRequest {
            method,
            path,
            token: token.unwrap_or_default(),
            body: body.unwrap_or_default(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("admin API: {}", status.message()))?
        .into_inner();
    Ok(Explanation::from(response))
}
