//! The `quay-authz` binary: a thin command-line edge over the library.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use quay_authz::check::audit::{LOG_QUEUE_LINES, NonBlocking, NonBlockingGuard};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

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
    CheckConfig {
        file: PathBuf,
        /// Print instead the Quay `config.yaml` fragment that pairs with it: a login provider
        /// per `forward` issuer, one for the identity bridge when an issuer uses `exchange`.
        #[arg(long)]
        quay_config: bool,
    },
    /// Run the full decision for one token and request and print every step.
    Explain(cli::explain::ExplainArgs),
    /// List and revoke exchanged tokens through a running instance's admin API.
    Tokens(cli::tokens::TokensArgs),
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

/// Sets up the log; the guard writes out what is still queued when `main` returns.
fn init_logging(format: LogFormat) -> Option<NonBlockingGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUAY_AUTHZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Audit events are written by a thread of their own, off the request path
    // (`check::audit::NonBlocking`: allows may be dropped and counted when it falls behind,
    // denies never). Without a thread, as before: written by the Check itself.
    let (writer, guard) = match NonBlocking::new(std::io::stderr(), LOG_QUEUE_LINES) {
        Ok((writer, guard)) => (BoxMakeWriter::new(writer), Some(guard)),
        Err(error) => {
            eprintln!("warning: no log writer thread ({error}); writing logs in line");
            (BoxMakeWriter::new(std::io::stderr), None)
        }
    };
    // Colour codes only for a person at a terminal: in a log file or a collector they are
    // noise, and writing them costs every audited Check a little.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        // Values from clients (claims, paths) are escaped: a newline must not forge a line.
        LogFormat::Text => builder
            .fmt_fields(quay_authz::check::audit::TextLogFields)
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.log_format);
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
        Command::Serve { config } => cli::serve::run(config).await,
        Command::CheckConfig { file, quay_config } => {
            Ok(cli::check_config::run(&file, quay_config))
        }
        Command::Explain(args) => cli::explain::run(args).await,
        Command::Tokens(args) => cli::tokens::run(args).await,
        Command::DevIssuer {
            listen,
            out,
            allow_non_loopback,
        } => cli::dev::issuer(listen, out, allow_non_loopback).await,
        Command::ConfigSchema { env_table } => Ok(cli::config_schema::run(env_table)),
        Command::DevUpstream { listen } => cli::dev::upstream(listen).await,
    }
}
