#![allow(dead_code)]
//! A real `redis-server` (Debian package, installed by `scripts/setup.sh`) on a free loopback
//! port: no persistence, its own temporary directory, killed when dropped.
//!
//! Usage: `let Some(mut redis) = RedisServer::start() else { return };` (skipped outside CI
//! when the binary is missing, a failure with `CI=true`); `redis.url()` for `bridge.store`
//! (also in a config for a `TestService` or a quay-authz process); `redis.stop()` and
//! `redis.restart()` (same port, so a store opened on it can reconnect); `redis.connection()`
//! to inspect keys (`PTTL`, `KEYS`) with the client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::tools::require_tool;

/// The `redis-server` binary, or `None` after saying why the test is skipped (a failure in CI).
pub fn require_redis() -> Option<PathBuf> {
    require_tool(
        "redis-server",
        "run scripts/setup.sh (it installs the Debian package redis-server)",
    )
}

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    password: Option<String>,
    /// Serves TLS only (`--tls-port`), with these PEM files: (certificate, key).
    tls: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one without a password; `None` when the test is skipped (no binary, not CI).
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Starts one that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Option<Self> {
        Self::start_with(Some(password.to_string()))
    }

    /// Starts one that speaks TLS only, with this certificate and key (PEM text): for
    /// `rediss://` URLs.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Option<Self> {
        Self::start_with_tls(None, Some((cert_pem, key_pem)))
    }

    fn start_with(password: Option<String>) -> Option<Self> {
        Self::start_with_tls(password, None)
    }

    fn start_with_tls(password: Option<String>, tls: Option<(&str, &str)>) -> Option<Self> {
        let bin = require_redis()?;
        let dir = tempfile::Builder::new()
            .prefix("quay-authz-redis")
            .tempdir()
            .expect("temporary directory");
        let tls = tls.map(|(cert, key)| {
            let files = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&files.0, cert).expect("write tls.crt");
            std::fs::write(&files.1, key).expect("write tls.key");
            files
        });
        let mut server = Self {
            bin,
            dir,
            port: free_port(),
            password,
            tls,
            child: None,
        };
        server.spawn();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` with TLS), with the password when the server
    /// has one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("{}://:{password}@127.0.0.1:{}/0", self.scheme(), self.port),
            None => self.url_without_password(),
        }
    }

    pub fn url_without_password(&self) -> String {
        format!("{}://127.0.0.1:{}/0", self.scheme(), self.port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and waits until it is gone; the port stays this server's.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: there is no persistence) and waits until it
    /// answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A synchronous connection through the client crate, to look at keys.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis URL")
            .get_connection()
            .expect("connect to the test redis-server")
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let mut command = Command::new(&self.bin);
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log));
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        self.child = Some(command.spawn().expect("start redis-server"));
        self.wait_answering();
    }

    /// Polls with `PING` until the server replies (`+PONG`, or `-NOAUTH` with a password);
    /// a TLS server, until it accepts connections.
    fn wait_answering(&mut self) {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..400 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server exited ({status}):\n{}", self.log());
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(100))
            {
                if self.tls.is_some() {
                    return;
                }
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut reply = [0u8; 16];
                if stream.write_all(b"PING\r\n").is_ok()
                    && let Ok(read) = stream.read(&mut reply)
                    && (reply[..read].starts_with(b"+PONG")
                        || reply[..read].starts_with(b"-NOAUTH"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server did not answer on port {}:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
