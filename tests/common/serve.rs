#![allow(dead_code)]
//! The real binary, serving: `quay-authz --log-format FORMAT serve --config FILE` as a child
//! process, its stderr (the logs) collected line by line. Killed when dropped.
//!
//! Usage: `let process = ServeProcess::spawn(&config_path, "json");`, then wait for the
//! "quay-authz serving" event in `process.events()` for its listeners' addresses.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

pub struct ServeProcess {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServeProcess {
    /// Starts it with only `QUAY_AUTHZ_LOG=info` in its environment, so a `QUAY_AUTHZ_*`
    /// variable of the shell running the tests cannot change it.
    pub fn spawn(config: &Path, log_format: &str) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quay-authz"))
            .args(["--log-format", log_format, "serve", "--config"])
            .arg(config)
            .env_clear()
            .env("QUAY_AUTHZ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start quay-authz");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        ServeProcess { child, log }
    }

    /// Every line it has logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lines that are JSON events (`--log-format json`).
    pub fn events(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
