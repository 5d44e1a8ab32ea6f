#![allow(dead_code)]
//! The quay-authz binary run as a user would: exit code, stdout and stderr.

use std::process::Command;

/// Runs the quay-authz binary with `args` and only the environment `env` (so a
/// `QUAY_AUTHZ_*` variable of the shell running the tests cannot change the outcome), and
/// gives its exit code (-1 if a signal ended it), stdout and stderr.
pub fn quay_authz(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_quay-authz"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run quay-authz");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
