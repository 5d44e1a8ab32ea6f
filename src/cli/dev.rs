//! `quay-authz dev-issuer` and `dev-upstream`: FOR LOCAL TESTING ONLY. They exist in builds
//! with the `dev` cargo feature (the default for a checkout: the quickstart and the tests use
//! them); a production build (`--no-default-features`, the container image) says how to get
//! them instead of minting tokens for anyone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "dev")]
pub async fn issuer(
    listen: SocketAddr,
    out: PathBuf,
    allow_non_loopback: bool,
) -> anyhow::Result<ExitCode> {
    use quay_authz::dev::issuer::DevIssuer;
    let issuer = if allow_non_loopback && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "the development issuer listens on a non-loopback address \
             (--allow-non-loopback): anyone who reaches it can mint tokens it signs"
        );
        DevIssuer::start_on_any_address(listen).await?
    } else {
        DevIssuer::start(listen).await?
    };
    write_quickstart_files(&issuer, &out)?;
    eprintln!(
        "development issuer (FOR LOCAL TESTING ONLY) at {}; config and tokens in {}",
        issuer.base_url(),
        out.display()
    );
    super::shutdown_signal().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "dev")]
pub async fn upstream(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    tokio::select! {
        result = quay_authz::dev::upstream::serve(listen) => result.with_context(|| format!("dev-upstream on {listen}"))?,
        _ = super::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "dev")]
fn write_quickstart_files(
    issuer: &quay_authz::dev::issuer::DevIssuer,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let now = quay_authz::model::clock::unix_now();
    let claims = |sub: &str, groups: &[&str]| {
        serde_json::json!({
            "iss": issuer.issuer(), "sub": sub, "preferred_username": sub, "aud": "quay",
            "groups": groups, "iat": now, "nbf": now, "exp": now + 12 * 3600,
        })
    };
    use anyhow::Context;
    use quay_authz::dev::issuer::{SigningKeyKind, quickstart_config};
    let allowed = issuer.mint(SigningKeyKind::Rsa, &claims("alice", &["acme-developers"]))?;
    let denied = issuer.mint(SigningKeyKind::Rsa, &claims("mallory", &[]))?;
    // Written atomically: the quickstart waits for these files to appear.
    for (name, contents) in [
        ("allowed.token", allowed),
        ("denied.token", denied),
        ("config.yaml", quickstart_config(issuer)),
    ] {
        let path = out.join(name);
        let temporary = out.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, contents)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What a build without the `dev` feature answers for a development command.
#[cfg(not(feature = "dev"))]
fn not_in_this_build(command: &str) -> anyhow::Result<ExitCode> {
    eprintln!(
        "error: `quay-authz {command}` is a development tool and this build leaves it out \
         (built without the `dev` cargo feature, as the container image is). Run it from a \
         checkout: `cargo run -- {command} …` (the default features include `dev`), or build \
         with `cargo build --features dev`."
    );
    Ok(ExitCode::from(2))
}

#[cfg(not(feature = "dev"))]
pub async fn issuer(
    _listen: SocketAddr,
    _out: PathBuf,
    _allow_non_loopback: bool,
) -> anyhow::Result<ExitCode> {
    not_in_this_build("dev-issuer")
}

#[cfg(not(feature = "dev"))]
pub async fn upstream(_listen: SocketAddr) -> anyhow::Result<ExitCode> {
    not_in_this_build("dev-upstream")
}
