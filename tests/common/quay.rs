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
        "Quay is not installed in .quay/: run scripts/setup.sh (it copies ../shared/quay, or the \
         folder QUAY_SRC names, and builds it there)",
    );
    None
}

pub fn free_port() -> u16 {
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
        Self::start_with(dir, oidc_url, Vec::new()).await
    }

    /// Like [`Quay::start`], with more of `run.sh`'s knobs (`QUAY_EXTRA_CONFIG`,
    /// `QUAY_SERVER_HOSTNAME`, …; `.quay/README.md`).
    pub async fn start_with(
        dir: &Path,
        oidc_url: &str,
        settings: Vec<(&'static str, String)>,
    ) -> Quay {
        let mut env = vec![
            ("QUAY_PG_PORT", free_port().to_string()),
            ("QUAY_REDIS_PORT", free_port().to_string()),
            // One worker: the tests send a handful of requests, the machine has few cores.
            ("QUAY_WORKERS", "1".to_string()),
        ];
        env.extend(settings);
        let quay = Quay {
            port: free_port(),
            dir: dir.to_path_buf(),
            env,
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

    /// Quay's log (gunicorn's access log among it: one line per answered request, with its
    /// path and query).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("var/quay.log")).unwrap_or_default()
    }

    /// The end of Quay's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Quay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The loopback ports of the bridge and of the skopeo test's Envoy, and the bridge's names, as
/// the shared Quay is configured with them (its second login provider and `SERVER_HOSTNAME`).
pub const BRIDGE_AUDIENCE: &str = "quay-authz";
/// The login service id Quay gives the bridge provider: `ZQUAYAUTHZ_LOGIN_CONFIG` in lower case.
///
/// Why the `Z`: Quay's `loginmanager.get_service_by_issuer` asks its providers in config order
/// (`run.sh` writes the keys sorted) and fetches each one's discovery document until one matches,
/// outside its own `try` (the `get_issuer` fallback): a provider whose discovery is unreachable
/// makes Quay drop the connection for every token of the providers after it. Sorting the bridge
/// last keeps `TESTOIDC` tokens working while no bridge runs. A production Quay meets the same
/// rule: quay-authz must be reachable from Quay, or be listed after the providers that matter.
pub const BRIDGE_SERVICE: &str = "zquayauthz";

/// One Quay per test binary (each start costs ~10 s): started on first use, with the loopback
/// OIDC issuer both Quay and quay-authz trust (`TESTOIDC`, client id `quay`), and a second login
/// provider for quay-authz's identity bridge at `http://127.0.0.1:{bridge_port}` (client id
/// [`BRIDGE_AUDIENCE`]), and `SERVER_HOSTNAME` = `127.0.0.1:{envoy_port}` so the registry's
/// challenge sends clients back through an Envoy listening there. Stopped when the test binary
/// exits (`atexit`); a run killed before that is cleaned up by the next start.
///
/// The tests of one binary share Quay's database, so each uses its own users and repositories.
pub struct SharedQuay {
    pub quay: Quay,
    pub issuer: quay_authz::dev::issuer::DevIssuer,
    /// quay-authz's HTTP port in the tests that start the bridge (one at a time: [`Self::bridge_lock`]).
    pub bridge_port: u16,
    /// The Envoy listen port Quay's `SERVER_HOSTNAME` names.
    pub envoy_port: u16,
    bridge_lock: tokio::sync::Mutex<()>,
    /// Runs the loopback issuer for every test of the binary (each test has its own runtime).
    _runtime: tokio::runtime::Runtime,
    _extra_config: tempfile::NamedTempFile,
}

static SHARED: std::sync::OnceLock<SharedQuay> = std::sync::OnceLock::new();

impl SharedQuay {
    /// The shared Quay, started on first call, or `None` (after the skip notice of
    /// [`require_quay`]) when `.quay/` has no Quay. Call from a multi-threaded tokio test.
    pub fn get() -> Option<&'static SharedQuay> {
        let dir = require_quay()?;
        Some(tokio::task::block_in_place(|| {
            SHARED.get_or_init(|| {
                // Started on a thread of its own: a runtime cannot be built inside the test's.
                std::thread::spawn(move || SharedQuay::start(dir))
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        }))
    }

    fn start(dir: PathBuf) -> SharedQuay {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the shared Quay");
        let issuer = runtime.block_on(super::issuer::start_issuer());
        let bridge_port = free_port();
        let envoy_port = free_port();
        // Named to sort after TESTOIDC ([`BRIDGE_SERVICE`]).
        let mut extra_config = tempfile::NamedTempFile::new().expect("a temporary file");
        std::io::Write::write_all(
            &mut extra_config,
            format!(
                "ZQUAYAUTHZ_LOGIN_CONFIG:\n  SERVICE_NAME: quay-authz\n  \
                 OIDC_SERVER: http://127.0.0.1:{bridge_port}/\n  \
                 OIDC_ISSUERS: [\"http://127.0.0.1:{bridge_port}\"]\n  \
                 CLIENT_ID: {BRIDGE_AUDIENCE}\n  CLIENT_SECRET: unused\n  \
                 LOGIN_SCOPES: [openid]\n  PREFERRED_USERNAME_CLAIM_NAME: preferred_username\n  \
                 DEBUGGING: true\n"
            )
            .as_bytes(),
        )
        .expect("write Quay's extra config");
        let settings = vec![
            (
                "QUAY_EXTRA_CONFIG",
                extra_config.path().display().to_string(),
            ),
            ("QUAY_SERVER_HOSTNAME", format!("127.0.0.1:{envoy_port}")),
        ];
        let quay = runtime.block_on(Quay::start_with(&dir, &issuer.base_url(), settings));
        // SAFETY: `stop_shared_quay` is a plain `extern "C" fn` with no arguments, as
        // atexit(3) requires; it only reads the initialised static.
        unsafe {
            libc::atexit(stop_shared_quay);
        }
        SharedQuay {
            quay,
            issuer,
            bridge_port,
            envoy_port,
            bridge_lock: tokio::sync::Mutex::new(()),
            _runtime: runtime,
            _extra_config: extra_config,
        }
    }

    /// Held by a test while its quay-authz listens on [`Self::bridge_port`].
    pub async fn bridge_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.bridge_lock.lock().await
    }

    /// `bridge.issuer` as the shared Quay's second login provider expects it.
    pub fn bridge_issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.bridge_port)
    }
}

extern "C" fn stop_shared_quay() {
    if let Some(shared) = SHARED.get() {
        shared.quay.stop();
    }
}
