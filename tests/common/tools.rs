//! Command-line tools the tests run (promtool, envoy --mode validate, …): find one, or skip
//! the test outside CI; run one and fail with its output.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `name` on `PATH`, or `None` after saying why the calling test is skipped. In CI
/// (`CI=true`) a missing tool fails the test instead: a suite that skips silently would pass
/// without testing anything.
pub fn require_tool(name: &str, hint: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        skip_unless_ci(&format!("{name} not found: {hint}"));
    }
    found
}

/// Says why the calling test is skipped, or, in CI (`CI=true`), fails it: a suite that skips
/// silently would pass without testing anything.
pub fn skip_unless_ci(message: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("skipping test: {message}");
}

/// Runs `bin` in the repository root and returns its stdout and stderr together, panicking
/// with them if it fails.
pub fn run_tool(bin: &Path, args: &[&str], what: &str) -> String {
    let output = Command::new(bin)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|err| panic!("run {}: {err}", bin.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{log}",
        output.status
    );
    log
}
