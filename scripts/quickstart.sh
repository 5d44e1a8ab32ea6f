#!/usr/bin/env bash
# A complete local stack on loopback, to see quay-authz decide real requests in a few minutes:
#
#   client ─► Envoy :8000 ─ext_authz─► quay-authz :9191 ─JWKS─► dev issuer :8081
#                 │
#                 └─► echo upstream :8080 (stands in for Quay: answers with what it received)
#
# Usage:
#   scripts/quickstart.sh          build, start everything, print curl commands, run until Ctrl-C
#   scripts/quickstart.sh stop     stop a quickstart started from another terminal or left behind
#   scripts/quickstart.sh envoy    only Envoy (deploy/envoy/envoy.yaml on loopback), in front of
#                                  whatever listens on :9191 and :8080; useful to debug the proxy
#
# Everything lives in .run/ (gitignored): logs (.run/*.log), the PIDs (.run/pids), the generated
# quay-authz config and tokens, and the loopback copy of the Envoy config.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

run_dir="$repo_root/.run"
pids_file="$run_dir/pids"
# The foreground quickstart itself, so `stop` can ask it to shut its stack down in order.
self_pid_file="$run_dir/quickstart.pid"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
quay_authz="$target_dir/release/quay-authz"
envoy_bin="${ENVOY_BIN:-$repo_root/.venv/bin/envoy}"

# The fixed loopback ports of the stack; deploy/envoy/envoy.yaml uses the same ones.
issuer_addr=127.0.0.1:8081
upstream_addr=127.0.0.1:8080
authz_http=127.0.0.1:9090 # /readyz; the gRPC (9191) and admin (9192) ports come from the config
envoy_listen=127.0.0.1:8000
envoy_admin=127.0.0.1:9901
all_ports=(8000 8080 8081 9090 9191 9192 9901)
envoy_ports=(8000 9901)

# How long each component may take to come up. The issuer and quay-authz start in milliseconds;
# the margin is for a loaded 2-core laptop.
start_timeout=30

say() { printf 'quickstart: %s\n' "$*"; }
fail() {
  printf 'quickstart: error: %s\n' "$*" >&2
  exit 1
}

# --- processes ------------------------------------------------------------------------------------
# .run/pids holds one `NAME PID EXECUTABLE` line per process, in start order. The executable is
# kept so that `stop` only signals a PID still running that program: after a reboot or a crash
# the PID may belong to someone else.

# start_bg NAME EXECUTABLE ARGS...: runs in the background, output to .run/NAME.log.
start_bg() {
  local name=$1
  shift
  say "starting $name: $*  (log: .run/$name.log)"
  "$@" >"$run_dir/$name.log" 2>&1 &
  local pid=$! i
  printf '%s %s %s\n' "$name" "$pid" "$1" >>"$pids_file"
  # Until the forked shell has exec'd, /proc shows this script's command line, and `stop` would
  # not recognise the process as EXECUTABLE. Wait for the exec (or an early exit).
  for ((i = 0; i < 100; i++)); do
    if is_running "$pid" "$1" || ! is_alive "$pid"; then
      break
    fi
    sleep 0.01
  done
}

# is_alive PID: the process exists and has not exited (a zombie, exited but not yet reaped by
# this shell, counts as gone). For this script's own children, where PID reuse is no concern.
is_alive() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  # Field 3, after `PID (COMM) `; COMM may itself contain spaces or parentheses.
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# is_running PID EXECUTABLE: the PID is alive and EXECUTABLE is on its command line (argv[0] for
# a binary; a later word when a script runs under an interpreter, e.g. `/usr/bin/env bash FILE`).
# A zombie (exited, not yet reaped) has an empty command line and counts as not running.
is_running() {
  local pid=$1 exe=$2 argv=() word
  mapfile -t -d '' argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
  for word in "${argv[@]}"; do
    [ "$word" = "$exe" ] && return 0
  done
  return 1
}

# Any process of .run/pids still running?
any_running() {
  local name pid exe
  [ -f "$pids_file" ] || return 1
  while read -r name pid exe; do
    if is_running "$pid" "$exe"; then
      return 0
    fi
  done <"$pids_file"
  return 1
}

stop_all() {
  [ -f "$pids_file" ] || return 0
  local lines=() name pid exe i waited
  mapfile -t lines <"$pids_file"
  # Reverse start order: Envoy first, so no new request reaches a half-stopped stack.
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    read -r name pid exe <<<"${lines[i]}"
    if is_running "$pid" "$exe"; then
      say "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      # SIGTERM is a graceful shutdown (quay-authz drains in-flight Checks); give it 10 s.
      for ((waited = 0; waited < 100; waited++)); do
        is_running "$pid" "$exe" || break
        sleep 0.1
      done
      if is_running "$pid" "$exe"; then
        say "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  done
  rm -f "$pids_file"
}

# --- readiness ------------------------------------------------------------------------------------

# port_in_use PORT: something accepts connections on 127.0.0.1:PORT (bash's /dev/tcp, no tools).
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# http_body URL: the body of a 2xx answer, or failure. Never through a proxy: all of it is loopback.
http_body() {
  curl --silent --fail --noproxy '*' --max-time 2 "$1"
}

# wait_for NAME DESCRIPTION CHECK...: runs CHECK until it succeeds; fails, quoting NAME's log, if
# NAME's process exits first or start_timeout passes.
wait_for() {
  local name=$1 what=$2 pid deadline
  shift 2
  read -r _ pid _ < <(grep "^$name " "$pids_file")
  deadline=$((SECONDS + start_timeout))
  until "$@"; do
    if ! is_alive "$pid"; then
      printf '\n--- last lines of .run/%s.log ---\n' "$name" >&2
      tail -n 30 "$run_dir/$name.log" >&2 || true
      fail "$name exited while waiting for: $what"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf '\n--- last lines of .run/%s.log ---\n' "$name" >&2
      tail -n 30 "$run_dir/$name.log" >&2 || true
      fail "$name: timed out after ${start_timeout}s waiting for: $what"
    fi
    sleep 0.2
  done
  say "$name: $what"
}

# All three files, non-empty. The dev issuer writes each atomically (temporary file, then
# rename), so a file that exists is complete.
issuer_files_written() {
  [ -s "$run_dir/config.yaml" ] && [ -s "$run_dir/allowed.token" ] && [ -s "$run_dir/denied.token" ]
}
quay_authz_ready() { http_body "http://$authz_http/readyz" >/dev/null; }
upstream_listening() { port_in_use "${upstream_addr##*:}"; }
envoy_live() { [ "$(http_body "http://$envoy_admin/ready" 2>/dev/null)" = "LIVE" ]; }

# --- steps ----------------------------------------------------------------------------------------

preflight() {
  command -v curl >/dev/null 2>&1 || fail "curl is needed (apt-get install curl)"
  mkdir -p "$run_dir"
  if any_running; then
    fail "a quickstart is already running (see .run/pids); stop it with: scripts/quickstart.sh stop"
  fi
  rm -f "$pids_file"
  local port
  for port in "$@"; do
    if port_in_use "$port"; then
      fail "127.0.0.1:$port is already in use; the quickstart needs ports ${*}"
    fi
  done
}

# The deploy config, unchanged but for the listener: on loopback, nothing is exposed to the
# network by a demo.
start_envoy() {
  sed 's/address: 0\.0\.0\.0/address: 127.0.0.1/' deploy/envoy/envoy.yaml >"$run_dir/envoy.yaml"
  if grep -q '0\.0\.0\.0' "$run_dir/envoy.yaml"; then
    fail "deploy/envoy/envoy.yaml still binds 0.0.0.0 after rewriting the listener address"
  fi
  [ -x "$envoy_bin" ] || fail "no Envoy at $envoy_bin; run scripts/setup.sh (or set ENVOY_BIN)"
  # No hot restart: it would share memory and sockets with any other Envoy on this machine.
  # The JSON access log (with the ext_authz dynamic metadata) goes to .run/envoy.log.
  start_bg envoy "$envoy_bin" -c "$run_dir/envoy.yaml" --disable-hot-restart \
    --base-id "$((RANDOM * 32768 + RANDOM))" -l warn --concurrency 1
  wait_for envoy "LIVE on http://$envoy_admin/ready" envoy_live
}

# Runs until Ctrl-C or until a component exits (then the stack is broken: stop all of it).
run_in_foreground() {
  local name pid
  while true; do
    wait -n || true
    # Gone if a `stop` that could not find this script stopped the stack itself.
    [ -f "$pids_file" ] || exit 0
    while read -r name pid _; do
      if ! is_alive "$pid"; then
        say "$name (pid $pid) exited; see .run/$name.log. Stopping the rest."
        exit 1
      fi
    done <"$pids_file"
  done
}

on_exit() {
  local status=$?
  trap - EXIT INT TERM
  stop_all
  rm -f "$self_pid_file"
  exit "$status"
}
on_signal() {
  printf '\n'
  say "stopping"
  exit 130 # the EXIT trap stops everything
}

# Traps that stop everything this run starts, whichever way it ends.
install_traps() {
  trap on_exit EXIT
  trap on_signal INT TERM
  printf '%s\n' "$$" >"$self_pid_file"
}

# `stop` from another terminal: ask the foreground quickstart (if any) to stop its stack, as
# Ctrl-C would, then stop whatever is left (a quickstart killed with SIGKILL leaves its children).
stop_command() {
  local pid waited argv=() word foreground=false
  if [ -f "$self_pid_file" ] && read -r pid <"$self_pid_file" &&
    mapfile -t -d '' argv 2>/dev/null <"/proc/$pid/cmdline"; then
    for word in "${argv[@]}"; do
      [[ "$word" == *quickstart.sh ]] && foreground=true
    done
  fi
  if [ "$foreground" = true ]; then
    say "asking the running quickstart (pid $pid) to stop"
    kill -TERM "$pid" 2>/dev/null || true
    for ((waited = 0; waited < 300; waited++)); do
      is_alive "$pid" || break
      sleep 0.1
    done
  fi
  rm -f "$self_pid_file"
  if [ -f "$pids_file" ]; then
    stop_all
  elif [ "$foreground" = false ]; then
    say "nothing to stop (no .run/pids)"
  fi
}

start_stack() {
  preflight "${all_ports[@]}"

  bash scripts/setup.sh
  say "cargo build --release --bin quay-authz (the first build takes a few minutes)"
  cargo build --release --bin quay-authz
  [ -x "$quay_authz" ] || fail "no binary at $quay_authz after cargo build"

  install_traps

  # (a) A development OIDC issuer: discovery and JWKS on loopback, and the tokens and config to
  # use with it. Stale outputs are removed first so the wait below sees this run's files.
  rm -f "$run_dir/config.yaml" "$run_dir/allowed.token" "$run_dir/denied.token"
  start_bg dev-issuer "$quay_authz" dev-issuer --listen "$issuer_addr" --out "$run_dir/"
  wait_for dev-issuer ".run/config.yaml and the tokens written" issuer_files_written

  # (b) quay-authz itself. /readyz turns 200 once every required issuer has keys, so this also
  # proves it fetched the issuer's JWKS.
  start_bg quay-authz "$quay_authz" serve --config "$run_dir/config.yaml"
  wait_for quay-authz "ready on http://$authz_http/readyz" quay_authz_ready

  # (c) Stands in for Quay: answers with the method, path and headers it received, so the
  # identity headers quay-authz adds are visible.
  start_bg dev-upstream "$quay_authz" dev-upstream --listen "$upstream_addr"
  wait_for dev-upstream "listening on $upstream_addr" upstream_listening

  # (d) Envoy, with the project's deploy config.
  start_envoy

  cat <<EOF

quay-authz quickstart is running. In another terminal, from $repo_root:

EOF
  # Quoted: the commands are printed as they are to be typed, $(cat …) included.
  cat <<'EOF'
# 1. Allowed: the token may pull and push acme/app. The echo upstream's JSON shows the
#    x-quay-authz-* identity headers that quay-authz had Envoy add.
curl -i -H "Authorization: Bearer $(cat .run/allowed.token)" http://127.0.0.1:8000/api/v1/repository/acme/app

# 2. Denied: a valid token without grants gets 403 with error="insufficient_scope".
curl -i -H "Authorization: Bearer $(cat .run/denied.token)" http://127.0.0.1:8000/api/v1/repository/acme/app

# 3. No token on the registry API: 401 with the Docker challenge (WWW-Authenticate: Bearer realm=…).
curl -i http://127.0.0.1:8000/v2/acme/app/manifests/latest

Logs: .run/quay-authz.log (one audit event per decision), .run/envoy.log (access log with the
ext_authz metadata), .run/dev-issuer.log, .run/dev-upstream.log.
Press Ctrl-C to stop everything (or run: scripts/quickstart.sh stop).
EOF
  run_in_foreground
}

start_envoy_only() {
  preflight "${envoy_ports[@]}"
  bash scripts/setup.sh
  install_traps
  start_envoy
  local port
  for port in 9191 8080; do
    port_in_use "$port" || say "note: nothing listens on 127.0.0.1:$port yet"
  done
  cat <<EOF

Envoy is running: listener http://$envoy_listen, admin http://$envoy_admin
(config .run/envoy.yaml, log .run/envoy.log). With quay-authz down every request gets 503:
  curl -i http://$envoy_listen/api/v1/repository/acme/app
Press Ctrl-C to stop it (or run: scripts/quickstart.sh stop).
EOF
  run_in_foreground
}

case "${1:-start}" in
  start) start_stack ;;
  stop) stop_command ;;
  envoy) start_envoy_only ;;
  -h | --help | help) sed -n '2,15p' "$repo_root/scripts/quickstart.sh" | sed 's/^# \{0,1\}//' ;;
  *) fail "unknown command '$1' (expected start, stop or envoy; see --help)" ;;
esac
