//! The `quay-authz` binary: a thin command-line edge over the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use quay_authz::authn::extract::RequestFacts;
use quay_authz::check::explain::Explanation;
use quay_authz::check::pipeline::Pipeline;
use quay_authz::config::Config;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind, quickstart_config};
use quay_authz::jwks::KeyStore;
use quay_authz::metrics::Metrics;
use quay_authz::server::admin::proto::ExplainRequest;
use quay_authz::server::admin::proto::admin_client::AdminClient;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "quay-authz",
    version,
    about = "Envoy ext_authz for Quay with OIDC tokens"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "QUAY_AUTHZ_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz Check (gRPC) and /metrics, /healthz, /readyz (HTTP).
    Serve {
        #[arg(long, env = "QUAY_AUTHZ_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration and print what it means.
    CheckConfig { file: PathBuf },
    /// Run the full decision for one token and request and print every step.
    Explain {
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
    },
    /// FOR LOCAL TESTING ONLY: a development OIDC issuer on loopback, with a matching
    /// configuration and sample tokens written to --out.
    DevIssuer {
        /// A loopback address unless --allow-non-loopback.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        #[arg(long)]
        out: PathBuf,
        /// Listen on a non-loopback --listen address: anyone who reaches it can mint tokens.
        #[arg(long)]
        allow_non_loopback: bool,
    },
    /// Print the JSON Schema of the configuration (`deploy/config.schema.json`), or with
    /// --env-table the README's table of `QUAY_AUTHZ_…` overrides.
    #[command(hide = true)]
    ConfigSchema {
        #[arg(long)]
        env_table: bool,
    },
    /// FOR LOCAL TESTING ONLY: an upstream that echoes each request as JSON.
    DevUpstream {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUAY_AUTHZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: in a log file or a collector they are
    // noise, and writing them costs every audited Check a little.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        // Values from clients (claims, paths) are escaped: a newline must not forge a line.
        LogFormat::Text => builder
            .fmt_fields(quay_authz::check::audit::TextLogFields)
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config: config_path,
        } => {
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
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                print!("{}", summarize(&config));
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("{error}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Explain {
            config,
            server,
            token,
            token_file,
            method,
            path,
            body,
            jwks_file,
            json,
        } => {
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
        Command::DevIssuer {
            listen,
            out,
            allow_non_loopback,
        } => {
            let issuer = if allow_non_loopback && !listen.ip().is_loopback() {
                tracing::warn!(
                    %listen,
                    "the development issuer listens on a non-loopback address \
                     (--allow-non-loopback): anyone who reaches it can mint tokens it signs"
                );
                DevIssuer::start_on_any_address(listen).await?
            } else {
                DevIssuer::start(listen).await?
            };
            write_quickstart_files(&issuer, &out)?;
            eprintln!(
                "development issuer (FOR LOCAL TESTING ONLY) at {}; config and tokens in {}",
                issuer.base_url(),
                out.display()
            );
            shutdown_signal().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::ConfigSchema { env_table } => {
            if env_table {
                print!("{}", quay_authz::config::env::markdown_table());
            } else {
                print!("{}", quay_authz::config::env::schema_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DevUpstream { listen } => {
            tokio::select! {
                result = quay_authz::dev::upstream::serve(listen) => result.with_context(|| format!("dev-upstream on {listen}"))?,
                _ = shutdown_signal() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
    let address = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let mut client = AdminClient::connect(address.clone())
        .await
        .with_context(|| format!("connecting to the admin API at {address}"))?;
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

fn write_quickstart_files(issuer: &DevIssuer, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let now = quay_authz::model::clock::unix_now();
    let claims = |sub: &str, groups: &[&str]| {
        serde_json::json!({
            "iss": issuer.issuer(), "sub": sub, "preferred_username": sub, "aud": "quay",
            "groups": groups, "iat": now, "nbf": now, "exp": now + 12 * 3600,
        })
    };
    let allowed = issuer.mint(SigningKeyKind::Rsa, &claims("alice", &["acme-developers"]))?;
    let denied = issuer.mint(SigningKeyKind::Rsa, &claims("mallory", &[]))?;
    // Written atomically: the quickstart waits for these files to appear.
    for (name, contents) in [
        ("allowed.token", allowed),
        ("denied.token", denied),
        ("config.yaml", quickstart_config(issuer)),
    ] {
        let path = out.join(name);
        let temporary = out.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, contents)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn summarize(config: &Config) -> String {
    let mut text = format!("{}: OK\n", config.origin);
    text.push_str(&format!(
        "listen: grpc {}, http {}, admin {}\nquay: service {}, realm {}\n\
         unauthenticated: {:?}\nheaders: prefix {}, remove_authorization {}\n\
         paths: non_api {:?}\n",
        config.listen.grpc,
        config.listen.http,
        config.listen.admin,
        config.quay.service,
        config.quay.realm,
        config.unauthenticated,
        config.headers.prefix,
        config.headers.remove_authorization,
        config.non_api,
    ));
    let jwks = &config.jwks;
    text.push_str(&format!(
        "limits: max_token_bytes {}, token_cache_entries {}\n\
         jwks: ttl {}s (clamped to {}s..{}s), min_refetch_interval {}s, max_refresh_interval {}s, \
         fetch_timeout {}s, \
         max_response_bytes {}, max_keys {}, stale_limit {}s\n\
         audit: allow_sample_rate {}\nshutdown_grace_seconds: {}\n",
        config.max_token_bytes,
        config.token_cache_entries,
        jwks.default_ttl.as_secs(),
        jwks.min_ttl.as_secs(),
        jwks.max_ttl.as_secs(),
        jwks.min_refetch_interval.as_secs(),
        jwks.max_refresh_interval.as_secs(),
        jwks.fetch_timeout.as_secs(),
        jwks.max_response_bytes,
        jwks.max_keys,
        jwks.stale_limit.as_secs(),
        config.audit.allow_sample_rate,
        config.shutdown_grace.as_secs(),
    ));
    if !config.overrides.is_empty() {
        text.push_str("environment overrides:\n");
        for applied in &config.overrides {
            text.push_str(&format!(
                "  {} = {} (from {})\n",
                applied.field, applied.value, applied.variable
            ));
        }
    }
    text.push_str("issuers:\n");
    for issuer in &config.issuers {
        text.push_str(&format!(
            "  - {} ({:?}), audiences: {}, algorithms: {}\n",
            issuer.name,
            issuer.preset,
            issuer.audiences.join(", "),
            issuer
                .algorithms
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for string in &issuer.issuer_strings {
            text.push_str(&format!("      iss {}\n", string.iss));
        }
        for source in &issuer.key_sources {
            text.push_str(&format!("      keys from {}\n", source.location.url()));
        }
    }
    text.push_str("rules:\n");
    for rule in &config.rules {
        let issuers = if rule.issuers.is_empty() {
            "all issuers".to_string()
        } else {
            rule.issuers.join(", ")
        };
        let grants: Vec<&str> = rule
            .grants
            .iter()
            .chain(rule.from_groups.iter().flat_map(|g| g.grants.iter()))
            .map(|g| g.text.as_str())
            .collect();
        text.push_str(&format!(
            "  - {} ({issuers}): {}\n",
            rule.name,
            grants.join("; ")
        ));
    }
    for warning in &config.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text
}

async fn shutdown_signal() {
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
