#![allow(dead_code)]
//! A real Quay v3.18 on loopback: the copy `scripts/setup.sh` makes of `../shared/quay` in the
//! gitignored `.quay/` (its venv, PostgreSQL and Redis; see `.quay/README.md`).
//!
//! ```ignore
//! let Some(dir) = common::quay::require_quay() else { return };
//! let quay = Quay::start(&dir, &issuer.base_url()).await;   // Quay, PostgreSQL, Redis
//! reqwest::get(quay.url("/api/v1/discovery")).await?;
//! // dropped: `run.sh stop` stops all three, even when the test panics
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `.quay/` in this checkout.
pub fn quay_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".quay")
}

/// `.quay/` when `scripts/setup.sh` installed Quay there (its venv, source and migrated
/// database), or `None` after printing why the calling test is skipped. In CI (`CI=true`) a
/// missing Quay is a failure: a suite that skips its Quay tests silently would pass without
/// testing against Quay.
pub fn require_quay() -> Option<PathBuf> {
    require(&[".venv/bin/python", "src/app.py", "var/.migrated"])
}

/// Like [`require_quay`], for tests that only import Quay's code (no database).
pub fn require_quay_source() -> Option<PathBuf> {
    require(&[".venv/bin/python", "src/app.py"])
}

fn require(files: &[&str]) -> Option<PathBuf> {
    let dir = quay_dir();
    if files.iter().all(|file| dir.join(file).is_file()) {
        return Some(dir);
    }
    super::tools::skip_unless_ci(
        "Quay is not installed in .quay/: run scripts/setup.sh (it copies ../shared/quay)",
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A running Quay (gunicorn) with its PostgreSQL and Redis, all on free loopback ports; all
/// three are stopped when this is dropped.
pub struct Quay {
    pub port: u16,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Quay {
    /// Starts Quay with `oidc_url` as its OIDC login provider (`TESTOIDC`, client id `quay`, so
    /// tokens for it carry `aud: quay`), and waits until it answers (`run.sh` does).
    pub async fn start(dir: &Path, oidc_url: &str) -> Quay {
        let quay = Quay {
            port: free_port(),
            dir: dir.to_path_buf(),
            env: vec![
                ("QUAY_PG_PORT", free_port().to_string()),
                ("QUAY_REDIS_PORT", free_port().to_string()),
                // One worker: the tests send a handful of requests, the machine has few cores.
                ("QUAY_WORKERS", "1".to_string()),
            ],
        };
        // A run killed before its guard ran leaves PostgreSQL and Redis up on its own ports, and
        // svc.sh would take them for ours: stop this copy's services first.
        quay.stop();
        // From here on a panic drops `quay`, which stops whatever did start.
        let script = quay.dir.join("run.sh");
        let port = quay.port.to_string();
        let oidc_url = oidc_url.to_string();
        let env = quay.env.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(script)
                .args([&port, &oidc_url])
                .envs(env)
                .output()
        })
        .await
        .expect("run.sh task")
        .expect("run .quay/run.sh");
        assert!(
            output.status.success(),
            "Quay did not start:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        quay
    }

    /// `run.sh stop`: Quay, PostgreSQL and Redis of this copy (harmless when none runs).
    fn stop(&self) {
        let _ = Command::new("bash")
            .arg(self.dir.join("run.sh"))
            .arg("stop")
            .envs(self.env.clone())
            .output();
    }

    /// `http://127.0.0.1:{port}{path}`: straight to Quay, around Envoy and quay-authz.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The end of Quay's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("var/quay.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Quay {
    fn drop(&mut self) {
        self.stop();
    }
}
