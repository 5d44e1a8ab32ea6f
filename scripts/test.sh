#!/usr/bin/env bash
# The test command: everything CI runs, in the order that fails fastest.
#
#   scripts/test.sh
#
# 1. scripts/setup.sh     Envoy installed and pinned; Quay copied from ../shared/quay and set up
# 2. cargo fmt --check    formatting
#    module_graph.py      no import cycles between our modules, and the layout's rules
# 3. cargo clippy         lints, warnings are errors
# 4. cargo test           unit, integration and end-to-end tests (real Envoy on loopback)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

step() { printf '\n==> %s\n' "$*"; }

step "scripts/setup.sh"
bash scripts/setup.sh

# The end-to-end tests use this Envoy rather than whichever one is first on PATH.
export ENVOY_BIN="$repo_root/.venv/bin/envoy"
"$ENVOY_BIN" --version >/dev/null

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "scripts/dev/module_graph.py (no import cycles; the layout's rules)"
python3 scripts/dev/module_graph.py --self-test
python3 scripts/dev/module_graph.py

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# The service alone, as the container image builds it: without the `dev` feature nothing of
# the development issuer, upstream or bench tooling may be needed.
step "cargo clippy --no-default-features --lib --bin quay-authz -- -D warnings"
cargo clippy --no-default-features --lib --bin quay-authz -- -D warnings

step "cargo test --all-targets"
cargo test --all-targets

step "all checks passed"
