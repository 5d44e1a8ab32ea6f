//! `quay-authz config-schema [--env-table]` (hidden): the JSON Schema of the configuration
//! (`deploy/config.schema.json`), or the README's table of `QUAY_AUTHZ_…` overrides.

use std::process::ExitCode;

pub fn run(env_table: bool) -> ExitCode {
    if env_table {
        print!("{}", quay_authz::config::env::markdown_table());
    } else {
        print!("{}", quay_authz::config::env::schema_text());
    }
    ExitCode::SUCCESS
}
