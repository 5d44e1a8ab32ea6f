//! `quay-authz tokens list|revoke`: exchanged tokens' lifecycle, asked of a running instance's
//! admin API (README, "Token lifecycle"). Never prints a token: the store holds none.
//!
//! Exit codes: 0 done; 1 refused (no such live `jti`, exchange not configured); 2 usage
//! (clap's own, or an argument the server rejects); 3 not possible now (the admin API cannot be
//! reached, or the token store did not answer): worth retrying.

use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use quay_authz::model::clock::rfc3339_utc;
use quay_authz::server::admin::proto::{
    IssuedToken, ListTokensRequest, RevokePrincipalRequest, RevokeTokenRequest,
};
use serde::Serialize;

#[derive(Args)]
pub struct TokensArgs {
    /// The admin API of a running instance (its `listen.admin`, host:port).
    #[arg(long, global = true, default_value = "127.0.0.1:9192")]
    admin: String,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// List live exchanged tokens: jti, principal, source issuer, scopes, issued, expires.
    List {
        /// Only this principal's tokens (the bridge `sub`).
        #[arg(long, allow_hyphen_values = true)]
        principal: Option<String>,
        /// Only tokens exchanged from this configured issuer (its name).
        #[arg(long, allow_hyphen_values = true)]
        issuer: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token (--jti) or every token a principal holds (--principal).
    Revoke(RevokeArgs),
}

/// Values may start with `-`: a `jti` is base64url (one in 64 starts with it), and a principal
/// is rendered from a template.
#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["jti", "principal"])))]
struct RevokeArgs {
    /// The token's `jti` (from `tokens list`).
    #[arg(long, allow_hyphen_values = true)]
    jti: Option<String>,
    /// Everything this principal was issued up to now, listed or not.
    #[arg(long, allow_hyphen_values = true)]
    principal: Option<String>,
    /// Print the revoked tokens as a JSON array.
    #[arg(long)]
    json: bool,
}

/// Exit codes (module documentation).
const REFUSED: u8 = 1;
const USAGE: u8 = 2;
const NOT_NOW: u8 = 3;

/// One token as `--json` prints it: exactly these fields (README, "Token lifecycle").
#[derive(Serialize)]
struct TokenView {
    jti: String,
    principal: String,
    username: String,
    source_issuer: String,
    scopes: Vec<String>,
    /// RFC 3339, UTC.
    issued_at: String,
    expires_at: String,
    /// `memory` or `redis` (`bridge.store`); absent in `revoke`'s answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
}

impl TokenView {
    fn new(token: IssuedToken, store: Option<&str>) -> Self {
        Self {
            jti: token.jti,
            principal: token.principal,
            username: token.username,
            source_issuer: token.source_issuer,
            scopes: token.scopes,
            issued_at: rfc3339_utc(token.issued_at),
            expires_at: rfc3339_utc(token.expires_at),
            store: store.map(str::to_string),
        }
    }
}

pub async fn run(args: TokensArgs) -> anyhow::Result<ExitCode> {
    let mut client = match super::admin_client(&args.admin).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(NOT_NOW));
        }
    };
    match args.command {
        TokensCommand::List {
            principal,
            issuer,
            json,
        } => {
            let answer = client
                .list_tokens(ListTokensRequest {
                    principal: principal.unwrap_or_default(),
                    source_issuer: issuer.unwrap_or_default(),
                })
                .await;
            let answer = match answer {
                Ok(answer) => answer.into_inner(),
                Err(status) => return Ok(refused(&status)),
            };
            let store = answer.store;
            let tokens: Vec<TokenView> = answer
                .tokens
                .into_iter()
                .map(|token| TokenView::new(token, Some(&store)))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print!("{}", table(&tokens));
                eprintln!("{} live exchanged token(s) (store: {store})", tokens.len());
            }
        }
        TokensCommand::Revoke(RevokeArgs {
            jti: Some(jti),
            json,
            ..
        }) => {
            let token = match client.revoke_token(RevokeTokenRequest { jti }).await {
                Ok(answer) => answer.into_inner().token,
                Err(status) => return Ok(refused(&status)),
            };
            let revoked: Vec<TokenView> = token
                .into_iter()
                .map(|token| TokenView::new(token, None))
                .collect();
            print_revoked(&revoked, json, "revoked:".into())?;
        }
        TokensCommand::Revoke(RevokeArgs {
            principal: Some(principal),
            json,
            ..
        }) => {
            let answer = client
                .revoke_principal(RevokePrincipalRequest {
                    principal: principal.clone(),
                })
                .await;
            let answer = match answer {
                Ok(answer) => answer.into_inner(),
                Err(status) => return Ok(refused(&status)),
            };
            let revoked: Vec<TokenView> = answer
                .tokens
                .into_iter()
                .map(|token| TokenView::new(token, None))
                .collect();
            let summary = format!(
                "revoked every token of {} issued at or before {} ({} live):",
                printable(&principal),
                rfc3339_utc(answer.revoked_before),
                revoked.len()
            );
            print_revoked(&revoked, json, summary)?;
        }
        // The argument group requires exactly one of the two; clap refused the rest.
        TokensCommand::Revoke(_) => {
            eprintln!("error: give --jti or --principal");
            return Ok(ExitCode::from(USAGE));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The admin API refused: its message, and the exit code for the kind of refusal.
fn refused(status: &tonic::Status) -> ExitCode {
    eprintln!("error: admin API: {}", printable(status.message()));
    ExitCode::from(exit_code(status.code()))
}

/// A refusal's exit code: the server rejected an argument (usage), the store did not answer
/// (not now), or anything else (refused: NOT_FOUND, FAILED_PRECONDITION).
fn exit_code(code: tonic::Code) -> u8 {
    match code {
        tonic::Code::InvalidArgument => USAGE,
        tonic::Code::Unavailable => NOT_NOW,
        _ => REFUSED,
    }
}

fn print_revoked(revoked: &[TokenView], json: bool, summary: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(revoked)?);
    } else {
        println!("{summary}");
        if !revoked.is_empty() {
            print!("{}", table(revoked));
        }
    }
    Ok(())
}

/// The list as a table: JTI, PRINCIPAL, ISSUER, SCOPES, ISSUED, EXPIRES; columns padded to
/// their widest value.
fn table(tokens: &[TokenView]) -> String {
    let header = ["JTI", "PRINCIPAL", "ISSUER", "SCOPES", "ISSUED", "EXPIRES"].map(String::from);
    let rows: Vec<[String; 6]> = std::iter::once(header)
        .chain(tokens.iter().map(|token| {
            [
                printable(&token.jti),
                printable(&token.principal),
                printable(&token.source_issuer),
                printable(&token.scopes.join(", ")),
                token.issued_at.clone(),
                token.expires_at.clone(),
            ]
        }))
        .collect();
    let mut widths = [0; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// A value from the store or a server message, with control characters escaped: a principal
/// rendered from claims must not move the terminal's cursor or forge a line.
fn printable(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_documented_exit_codes() {
        for (code, expected) in [
            (tonic::Code::NotFound, 1),
            (tonic::Code::FailedPrecondition, 1),
            (tonic::Code::InvalidArgument, 2),
            // revocation_unavailable: the token store did not answer; worth retrying.
            (tonic::Code::Unavailable, 3),
        ] {
            assert_eq!(exit_code(code), expected, "{code:?}");
        }
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("gh:42 ünïcode"), "gh:42 ünïcode");
        assert_eq!(printable("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
    }
}
