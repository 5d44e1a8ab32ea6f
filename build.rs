//! Compiles the project's own admin API (`proto/`) with a vendored `protoc`, so building needs
//! no system protoc, and records the git revision for `quay_authz_build_info`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/quay_authz/admin/v1/admin.proto"], &["proto"])?;

    let revision = git_revision();
    println!("cargo:rustc-env=QUAY_AUTHZ_GIT_REVISION={revision}");
    Ok(())
}

/// The revision this build comes from: `QUAY_AUTHZ_GIT_REVISION` when the builder sets it (a
/// Docker build from a tarball has no `.git`), else the checkout's `HEAD`, else `unknown`.
///
/// Only the files that change when `HEAD` moves are watched, so an ordinary edit does not rerun
/// this script; a commit does (once). The working tree's dirtiness is deliberately not
/// reported: watching every file for it would rebuild the crate on every save.
fn git_revision() -> String {
    println!("cargo:rerun-if-env-changed=QUAY_AUTHZ_GIT_REVISION");
    if let Ok(revision) = std::env::var("QUAY_AUTHZ_GIT_REVISION")
        && !revision.trim().is_empty()
    {
        return revision.trim().to_string();
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    // A source tarball unpacked inside some other repository must not report that
    // repository's revision: the checkout's top level has to be this crate's directory.
    let Some(top_level) = git(&manifest_dir, &["rev-parse", "--show-toplevel"]) else {
        return "unknown".into();
    };
    let same_dir = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_dir(Path::new(&top_level), &manifest_dir) {
        return "unknown".into();
    }
    watch_head(&manifest_dir);
    git(&manifest_dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// Asks cargo to rerun when `HEAD` or the branch it points to moves. In a worktree `.git` is a
/// file and `HEAD` lives in `.git/worktrees/NAME` while branches live in the common directory,
/// so both are asked of git rather than guessed. Only existing files are named: cargo treats a
/// missing one as always changed, which would rerun this script on every build.
fn watch_head(manifest_dir: &Path) {
    let absolute = |path: String| {
        let path = PathBuf::from(path);
        if path.is_absolute() {
            path
        } else {
            manifest_dir.join(path)
        }
    };
    let Some(git_dir) = git(manifest_dir, &["rev-parse", "--git-dir"]).map(absolute) else {
        return;
    };
    let common_dir = git(manifest_dir, &["rev-parse", "--git-common-dir"])
        .map(absolute)
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common_dir.join(branch));
    }
    for path in watched.iter().filter(|path| path.is_file()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
