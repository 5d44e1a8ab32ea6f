//! `quay-authz-bench`: the gRPC load generator, the no-op ext_authz baseline server and the
//! resilience figures. FOR MEASURING: none of it belongs in front of real traffic.
//!
//! ```text
//! quay-authz-bench noop --listen 127.0.0.1:9391
//! quay-authz-bench load --target http://127.0.0.1:9191 --tokens tokens.txt --json
//! quay-authz-bench summarize --baseline "no-op server" runs.jsonl
//! quay-authz-bench section --file BENCHMARKS.md --title "Resilience" < body.md
//! quay-authz-bench resilience --server-bin target/release/quay-authz
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quay_authz::dev::bench::loadgen::{self, LoadReport, LoadSettings, RequestShape, Workload};
use quay_authz::dev::bench::markdown::{comparison_table, goal_lines, replace_section};
use quay_authz::dev::bench::noop;
use quay_authz::dev::bench::resilience::{self, ResilienceSettings};
use quay_authz::dev::issuer::DevIssuer;

#[derive(Parser)]
#[command(
    name = "quay-authz-bench",
    version,
    about = "Load generator, no-op ext_authz server and resilience figures for quay-authz"
)]
struct Cli {
    /// Runtime worker threads (default: the CPUs this process may run on).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive ext_authz Check at a fixed concurrency for a fixed time and report rps and
    /// latency percentiles.
    Load {
        /// The ext_authz gRPC server.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        target: String,
        /// Bearer tokens, one per line, cycled through.
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/v2/acme/app/manifests/latest")]
        path: String,
        #[arg(long, default_value = "quay.example.com")]
        host: String,
        /// Checks in flight at any time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections they share.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Stop after this many Checks (warm-up included).
        #[arg(long)]
        max_requests: Option<u64>,
        /// A name for this run in the report (`summarize` groups by it).
        #[arg(long, default_value = "")]
        label: String,
        /// The server's process id, when it runs on this machine (Linux): report its CPU
        /// time per Check over the measured window.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve a no-op ext_authz that answers every Check OK at once (the transport's limit).
    Noop {
        #[arg(long, default_value = "127.0.0.1:9391")]
        listen: SocketAddr,
        /// Answer as quay-authz allows a Check (its identity headers, headers to remove and
        /// dynamic metadata) instead of an empty OK: the transport's cost of that answer.
        #[arg(long)]
        like_quay_authz: bool,
    },
    /// Turn `load --json` lines into a Markdown table: medians per label, rps against a
    /// baseline label.
    Summarize {
        #[arg(long)]
        baseline: String,
        /// Also say, per label, whether its rps reaches this fraction of the baseline's...
        #[arg(long)]
        goal_ratio: Option<f64>,
        /// ...and whether its median p99 stays within this many microseconds.
        #[arg(long, default_value_t = 1000.0)]
        goal_p99_us: f64,
        /// Files of `load --json` output, one JSON object per line.
        files: Vec<PathBuf>,
    },
    /// Replace (or add) one `## TITLE` section of a Markdown file with standard input.
    Section {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        title: String,
    },
    /// Key rotation under load, a random-kid flood and RSS with many cached tokens, against
    /// `quay-authz serve` processes and an in-process development issuer. Prints Markdown.
    Resilience {
        /// The quay-authz binary (default: the one beside this binary).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Tokens in the flood and the memory scenario.
        #[arg(long, default_value_t = 100_000)]
        tokens: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Seconds of each rotation phase (old key, both, new key).
        #[arg(long, default_value_t = 4)]
        rotation_phase: u64,
        /// The server's `jwks.min_refetch_interval_seconds`.
        #[arg(long, default_value_t = 5)]
        min_refetch_interval: u64,
        /// Print the figures as JSON instead of Markdown.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let result = builder
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Load {
            target,
            tokens,
            method,
            path,
            host,
            concurrency,
            connections,
            duration,
            warmup,
            max_requests,
            label,
            server_pid,
            json,
        } => {
            let text = std::fs::read_to_string(&tokens)
                .with_context(|| format!("reading {}", tokens.display()))?;
            let tokens = loadgen::parse_tokens(&text);
            anyhow::ensure!(!tokens.is_empty(), "no tokens in the tokens file");
            let shape = RequestShape { method, path, host };
            let workload = Arc::new(Workload::new(shape.requests(&tokens)));
            let settings = LoadSettings {
                concurrency,
                connections,
                duration: seconds(duration)?,
                warmup: seconds(warmup)?,
                max_requests,
                server_pid,
                ..LoadSettings::new(target)
            };
            let mut report = loadgen::run(&settings, &workload).await?;
            report.label = label;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        Command::Noop {
            listen,
            like_quay_authz,
        } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            eprintln!(
                "no-op ext_authz on {} (answers every Check OK; stop it with a signal)",
                listener.local_addr()?
            );
            // Nothing to drain or flush: SIGINT and SIGTERM end the process as they are.
            let answer = if like_quay_authz {
                noop::Answer::LikeQuayAuthz
            } else {
                noop::Answer::Empty
            };
            noop::serve(listener, answer, std::future::pending()).await?;
            Ok(())
        }
        Command::Summarize {
            baseline,
            goal_ratio,
            goal_p99_us,
            files,
        } => {
            let mut reports = Vec::new();
            for file in &files {
                reports.extend(read_reports(file)?);
            }
            anyhow::ensure!(
                reports.iter().any(|report| report.label == baseline),
                "no run is labelled {baseline:?}"
            );
            print!("{}", comparison_table(&reports, &baseline));
            if let Some(goal_ratio) = goal_ratio {
                print!(
                    "\n{}",
                    goal_lines(&reports, &baseline, goal_ratio, goal_p99_us)
                );
            }
            Ok(())
        }
        Command::Section { file, title } => {
            let mut body = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut body)
                .context("reading the section from standard input")?;
            let document = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            std::fs::write(&file, replace_section(&document, &title, &body))
                .with_context(|| format!("writing {}", file.display()))?;
            Ok(())
        }
        Command::Resilience {
            server_bin,
            tokens,
            concurrency,
            connections,
            rotation_phase,
            min_refetch_interval,
            json,
        } => {
            let server_bin = match server_bin {
                Some(path) => path,
                None => sibling_binary("quay-authz")?,
            };
            let settings = ResilienceSettings {
                tokens,
                concurrency,
                connections,
                rotation_phase: Duration::from_secs(rotation_phase),
                min_refetch_interval_seconds: min_refetch_interval,
                ..ResilienceSettings::new(server_bin)
            };
            let issuer = Arc::new(DevIssuer::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
            let figures = resilience::measure(&settings, issuer).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                print!("{}", figures.to_markdown());
            }
            Ok(())
        }
    }
}

fn seconds(value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{value} is not a duration in seconds"))
}

fn read_reports(file: &Path) -> anyhow::Result<Vec<LoadReport>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).with_context(|| {
                format!("{} line {}: not a load report", file.display(), index + 1)
            })
        })
        .collect()
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    let sibling = me.with_file_name(name);
    anyhow::ensure!(
        sibling.is_file(),
        "{} not found: pass --server-bin",
        sibling.display()
    );
    Ok(sibling)
}
