#!/usr/bin/env bash
# Throughput and latency through a real Envoy, six ways in one run, each loaded with wrk on a
# registry pull (GET /v2/acme/app/manifests/latest), (a)-(d) with one valid token:
#
#   (a) none       Envoy proxies straight to the upstream, no auth filter
#   (b) jwt_authn  Envoy's own JWT filter: local JWKS (the dev issuer's keys, inline), JWT cache
#   (c) ext_authz  deploy/envoy/envoy.yaml as deployed: ext_authz over gRPC to quay-authz (release)
#   (d) noop       the same ext_authz filter, to `quay-authz-bench noop` (answers every Check OK at
#                  once): what any ext_authz server could reach through this Envoy, the transport's
#                  limit, and the baseline the issue 14 goals compare (c) with
#   and with 256 distinct valid tokens sent in rotation (rotating.lua; minted by the dev issuer):
#   (e) uncached   the ext_authz filter of (c), to a second quay-authz with the verified-token cache
#                  off (limits.token_cache_entries: 0): every Check verifies its token's signature
#   (f) noop_rotating  Envoy (d) and its no-op server, loaded like (e): the baseline of (e)
#
#   wrk ─► Envoy (a|b|c|d|e) ─► upstream (a second Envoy answering 200 itself, deploy/envoy/bench/upstream.yaml)
#              ├─(c) gRPC Check─► quay-authz ─JWKS─► quay-authz dev-issuer
#              ├─(d, f) gRPC Check─► quay-authz-bench noop
#              └─(e) gRPC Check─► quay-authz, cache off ─JWKS─► the same dev issuer
#
# Usage:
#   scripts/bench/envoy_compare.sh [--record] [--rounds N] [--duration S] [--warmup S]
#                                  [--connections N] [--threads N] [--pin] [--noop-like-quay-authz]
#   scripts/bench/envoy_compare.sh render --out DIR --issuer ISS --jwks FILE
#
#   --record       also write the run into BENCHMARKS.md ("Through Envoy …", last 3 runs kept)
#   --rounds N     rounds of a to f, interleaved so drifting machine load hits all six (3)
#   --duration S   seconds of each timed wrk run (15); --warmup S: untimed run per variant first (3)
#   --connections N, --threads N: wrk's -c (16) and -t (1)
#   --pin          pin with taskset: the Envoy under test alone on CPU 0; wrk, the upstream,
#                  both quay-authz, the no-op server and the issuer on CPU 1 (ENVOY_CPUS and AUX_CPUS, taskset -c lists,
#                  override). For a quiet machine: with other load on it, pinned processes cannot
#                  move to the less busy core, and every figure drops (see BENCHMARKS.md).
#   --noop-like-quay-authz  the no-op server answers with the OK quay-authz gives an allowed Check
#                  (identity headers, headers to remove, dynamic metadata) instead of an empty
#                  OK: (d) and (f) then cost the transport and Envoy what quay-authz's answer
#                  costs, and quay-authz / no-op is the decision's share alone
#   render         only write the five Envoy configs and the upstream's config into DIR, with
#                  placeholder ports (tests/envoy_config.rs validates them with a real Envoy)
#
# Every variant is checked before it is timed: the valid token (and in (e), (f) the first and last
# rotating token) must get 200, and in (b), (c) and (e) a request without a token must be refused,
# so a misconfiguration fails the run instead of measuring the wrong thing; after the timed runs,
# (e)'s quay-authz must report an empty cache (no hit). wrk's non-2xx and socket error counts are
# reported.
# Needs: curl, wrk and Envoy (scripts/setup.sh), python3 (free ports), cargo.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

deploy_config=deploy/envoy/envoy.yaml
bench_dir=deploy/envoy/bench
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
quay_authz="$target_dir/release/quay-authz"
quay_authz_bench="$target_dir/release/quay-authz-bench"
envoy_bin="${ENVOY_BIN:-$repo_root/.venv/bin/envoy}"
# The Envoys (one per variant but (f), which loads noop's), and the timed loads: which Envoy each
# drives and with which wrk script (token.lua: one token; rotating.lua: $rotating_tokens tokens).
variants=(none jwt_authn ext_authz noop uncached)
loads=(none jwt_authn ext_authz noop uncached noop_rotating)
declare -A load_envoy=([none]=none [jwt_authn]=jwt_authn [ext_authz]=ext_authz [noop]=noop
  [uncached]=uncached [noop_rotating]=noop)
declare -A load_script=([none]=token.lua [jwt_authn]=token.lua [ext_authz]=token.lua
  [noop]=token.lua [uncached]=rotating.lua [noop_rotating]=rotating.lua)
rotating_tokens=256
# A registry pull the quickstart configuration grants to allowed.token (repository:acme/app:pull).
bench_path=/v2/acme/app/manifests/latest
start_timeout=30
section_heading='## Through Envoy (no auth vs jwt_authn vs ext_authz → quay-authz vs ext_authz → no-op)'
runs_begin='<!-- envoy_compare.sh: runs, newest first (the script keeps the last 3) -->'
runs_end='<!-- envoy_compare.sh: end of runs -->'
runs_kept=3

# shellcheck source=scripts/bench/machine_load.sh
source "$repo_root/scripts/bench/machine_load.sh"

say() { printf 'envoy_compare: %s\n' "$*" >&2; }
fail() {
  printf 'envoy_compare: error: %s\n' "$*" >&2
  exit 1
}

# --- Envoy configs ----------------------------------------------------------------------------------

# render_variant VARIANT OUT LISTEN_PORT ADMIN_PORT UPSTREAM_PORT AUTHZ_PORT [ISSUER JWKS_FILE]
#
# deploy/envoy/envoy.yaml with its four ports and its listener address replaced, as the tests do,
# and its ext_authz filter kept (ext_authz, and noop and uncached, whose AUTHZ_PORT is the no-op
# server's or the cache-off quay-authz's),
# dropped (none) or replaced by the jwt_authn filter of deploy/envoy/bench/jwt_authn.filter.yaml
# (jwt_authn). Everything else (connection manager settings, JSON access log, routes, clusters) is
# the deploy config's, the same in all five.
# Fails if the deploy config no longer has each replaced piece exactly once.
render_variant() {
  local variant=$1 out=$2 listen=$3 admin=$4 upstream=$5 authz=$6 issuer=${7:-} jwks_file=${8:-}
  local snippet=/dev/null
  if [ "$variant" = jwt_authn ]; then
    snippet="$bench_dir/jwt_authn.filter.yaml"
  fi
  awk -v variant="$variant" -v snippet="$snippet" -v jwks_file="$jwks_file" -v issuer="$issuer" \
    -v listen="$listen" -v admin="$admin" -v upstream="$upstream" -v authz="$authz" '
    # Literal (not regex, no `&`) replacement of the first `needle` in `text`.
    function replace(text, needle, with,   at) {
      at = index(text, needle)
      return at ? substr(text, 1, at - 1) with substr(text, at + length(needle)) : text
    }
    function indent_of(line) { match(line, /^ */); return RLENGTH }
    BEGIN {
      needles["port_value: 8000"] = "port_value: " listen
      needles["port_value: 9901"] = "port_value: " admin
      needles["port_value: 8080"] = "port_value: " upstream
      needles["port_value: 9191"] = "port_value: " authz
      needles["address: 0.0.0.0"] = "address: 127.0.0.1"
      if (jwks_file != "") {
        # One line of YAML: JSON lines joined (a JSON string holds no raw newline).
        while ((getline line < jwks_file) > 0) jwks = jwks line
        gsub(/\047/, "\047\047", jwks) # YAML single-quoted: a quote is written twice
      }
      skip_indent = -1
    }
    # Inside a block being dropped: everything indented deeper than its first line (for a list
    # item, up to the next item of the same list).
    skip_indent >= 0 {
      if (indent_of($0) > skip_indent || (skip_item && indent_of($0) == skip_indent && $0 !~ /^ *- /) || $0 ~ /^ *$/) next
      skip_indent = -1
    }
    /^ *- name: envoy\.filters\.http\.ext_authz *$/ {
      filters++
      if (variant == "ext_authz" || variant == "noop" || variant == "uncached") { print; next }
      skip_indent = indent_of($0); skip_item = 1
      pad = substr($0, 1, skip_indent)
      while ((getline line < snippet) > 0) {
        if (line ~ /^#/) continue
        line = replace(line, "@ISSUER@", issuer)
        line = replace(line, "@JWKS@", jwks)
        print (line == "" ? "" : pad line)
      }
      next
    }
    # The /v2/ route turns off ext_authz body buffering: only meaningful where ext_authz runs.
    /^ *typed_per_filter_config: *$/ && variant != "ext_authz" && variant != "noop" && variant != "uncached" {
      per_route++; skip_indent = indent_of($0); skip_item = 0; next
    }
    # Through placeholders, so that a new port equal to another deploy port is not replaced again.
    {
      for (needle in needles) {
        if (index($0, needle)) { $0 = replace($0, needle, "\001" needle "\001"); found[needle]++ }
      }
      for (needle in needles) $0 = replace($0, "\001" needle "\001", needles[needle])
      print
    }
    END {
      for (needle in needles) {
        if (found[needle] != 1) {
          printf "deploy/envoy/envoy.yaml must contain `%s` exactly once (found %d)\n", needle, found[needle] > "/dev/stderr"
          exit 1
        }
      }
      if (filters != 1) {
        printf "deploy/envoy/envoy.yaml must have exactly one envoy.filters.http.ext_authz filter (found %d)\n", filters > "/dev/stderr"
        exit 1
      }
    }
  ' "$deploy_config" >"$out" || fail "could not render the $variant variant from $deploy_config"
  if grep -q '@[A-Z_]*@\|0\.0\.0\.0' "$out"; then
    fail "$out still has a placeholder or a 0.0.0.0 address after rendering"
  fi
}

# render_upstream OUT LISTEN_PORT ADMIN_PORT
render_upstream() {
  sed -e "s/@LISTEN_PORT@/$2/" -e "s/@ADMIN_PORT@/$3/" "$bench_dir/upstream.yaml" >"$1"
}

# The `render` command: the configs alone, for validation (ports are placeholders: nothing binds).
render_command() {
  local out="" issuer="" jwks=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out=${2:?--out needs a directory} && shift 2 ;;
      --issuer) issuer=${2:?--issuer needs a value} && shift 2 ;;
      --jwks) jwks=${2:?--jwks needs a file} && shift 2 ;;
      *) fail "render: unknown argument '$1'" ;;
    esac
  done
  [ -n "$out" ] && [ -n "$issuer" ] && [ -s "$jwks" ] ||
    fail "usage: render --out DIR --issuer ISS --jwks FILE (a non-empty JWKS document)"
  mkdir -p "$out"
  local variant
  local -A render_authz_port=([noop]=10005 [uncached]=10006)
  for variant in "${variants[@]}"; do
    # The no-op server (10005) and the cache-off quay-authz (10006) listen on ports of their
    # own, as in a run.
    render_variant "$variant" "$out/$variant.yaml" 10000 10001 10002 \
      "${render_authz_port[$variant]:-10003}" "$issuer" "$jwks"
  done
  render_upstream "$out/upstream.yaml" 10002 10004
}

# --- processes --------------------------------------------------------------------------------------
# Every process is a child of this script, stopped by the EXIT trap in reverse start order.

work=""
names=()
pids=()
keep_work=false

# start_bg NAME CPUS COMMAND...: in the background, pinned to CPUS (unless --no-pin), output in
# $work/NAME.log. taskset execs the command, so $! is the process itself.
start_bg() {
  local name=$1 cpus=$2
  shift 2
  if [ "$pin" = true ]; then
    taskset -c "$cpus" "$@" >"$work/$name.log" 2>&1 &
  else
    "$@" >"$work/$name.log" 2>&1 &
  fi
  names+=("$name")
  pids+=("$!")
}

stop_all() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    wait "${pids[i]}" 2>/dev/null || true
  done
}

on_exit() {
  local status=$?
  trap - EXIT INT TERM
  stop_all
  if [ -n "$work" ]; then
    if [ "$status" -ne 0 ] || [ "$keep_work" = true ]; then
      say "logs and configs kept in $work"
    else
      rm -rf "$work"
    fi
  fi
  exit "$status"
}

# wait_for NAME DESCRIPTION CHECK...: until CHECK succeeds; fails quoting NAME's log if NAME exits
# or start_timeout passes.
wait_for() {
  local name=$1 what=$2 i pid=""
  shift 2
  for i in "${!names[@]}"; do
    [ "${names[i]}" = "$name" ] && pid=${pids[i]}
  done
  local deadline=$((SECONDS + start_timeout))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      printf -- '--- last lines of %s/%s.log ---\n' "$work" "$name" >&2
      tail -n 30 "$work/$name.log" >&2 || true
      fail "$name: gone or not ready within ${start_timeout}s: $what"
    fi
    sleep 0.2
  done
}

http() { curl --silent --noproxy '*' --max-time 5 "$@"; }
envoy_live() { [ "$(http "http://127.0.0.1:$1/ready")" = LIVE ]; }
readyz() { http --fail --output /dev/null "http://127.0.0.1:$1/readyz"; }
issuer_files() { [ -s "$work/issuer/config.yaml" ] && [ -s "$work/issuer/allowed.token" ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_ports N: N distinct loopback ports that were free a moment ago.
free_ports() {
  python3 -c '
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
' "$1"
}

start_envoy() {
  local name=$1 config=$2 admin=$3 cpus=$4
  # No hot restart, random base id: other Envoys (tests, a quickstart) may run on this machine.
  start_bg "$name" "$cpus" "$envoy_bin" -c "$config" --disable-hot-restart \
    --base-id "$((RANDOM * 32768 + RANDOM))" -l warn --concurrency 1
  wait_for "$name" "LIVE on :$admin" envoy_live "$admin"
}

# --- checks and load ----------------------------------------------------------------------------------

# write_rotating_lua TOKENS_FILE: a wrk script sending the tokens of TOKENS_FILE (one a line) in
# turn, one per request. The requests are formatted once, in init, so the per-request Lua is a table
# lookup (the no-op run (f) pays the same, so the ratio of (e) to it is not skewed by it).
write_rotating_lua() {
  printf -- '-- %s valid tokens in rotation (envoy_compare.sh)\nlocal tokens = {\n' "$(wc -l <"$1")"
  awk '{ gsub(/[^A-Za-z0-9._-]/, ""); printf "  \"%s\",\n", $0 }' "$1"
  cat <<'EOF_LUA'
}
local requests, turn = {}, 0
init = function(args)
  for i, token in ipairs(tokens) do
    requests[i] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
  end
end
request = function()
  turn = turn % #requests + 1
  return requests[turn]
end
EOF_LUA
}

# status_of URL [TOKEN_FILE]: the HTTP status of a GET, with the token (if any) as bearer.
status_of() {
  local header=()
  if [ -n "${2:-}" ]; then
    header=(--header "Authorization: Bearer $(cat "$2")")
  fi
  http --output /dev/null --write-out '%{http_code}' "${header[@]}" "$1" || true
}

# expect_status VARIANT WANT URL [TOKEN_FILE] DESCRIPTION
expect_status() {
  local variant=$1 want=$2 url=$3 token=$4 what=$5 got
  got=$(status_of "$url" "$token")
  [ "$got" = "$want" ] || fail "$variant: $what got HTTP $got, expected $want (logs of Envoy and quay-authz in $work)"
  say "$variant: $what → $got"
}

# run_wrk LOAD SECONDS OUT: wrk against the listener of LOAD's Envoy with LOAD's script; the
# tokens go in through a Lua script so they are not on wrk's command line.
run_wrk() {
  local load=$1 seconds=$2 out=$3
  local cmd=(wrk "-t$threads" "-c$connections" "-d${seconds}s" --latency -s "$work/${load_script[$load]}"
    "http://127.0.0.1:${listen_port[${load_envoy[$load]}]}$bench_path")
  if [ "$pin" = true ]; then
    cmd=(taskset -c "$aux_cpus" "${cmd[@]}")
  fi
  "${cmd[@]}" >"$out" 2>&1 || fail "wrk failed against $load: $(cat "$out")"
}

# parse_wrk FILE: `rps p50_ms p90_ms p99_ms non2xx socket_errors`.
parse_wrk() {
  awk '
    function ms(value) {
      if (value ~ /us$/) return value / 1000
      if (value ~ /ms$/) return value + 0
      if (value ~ /m$/) return value * 60000
      return value * 1000 # seconds
    }
    /^ *50%/ { p50 = ms($2) } /^ *90%/ { p90 = ms($2) } /^ *99%/ { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(/,/, ""); errors = $4 + $6 + $8 + $10 }
    END {
      if (rps == "" || p99 == "") exit 1
      printf "%.0f %.3f %.3f %.3f %d %d\n", rps, p50, p90, p99, non2xx, errors
    }
  ' "$1" || fail "could not read wrk's output in $1: $(cat "$1")"
}

# median of the numbers on stdin, one a line.
median() {
  sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# goal_note VALUE OP BOUND TEXT: "meets the TEXT goal" or "misses the TEXT goal" (OP: >= or <=).
goal_note() {
  if awk -v v="$1" -v op="$2" -v b="$3" 'BEGIN { exit !(op == ">=" ? v >= b : v <= b) }'; then
    printf 'meets the %s goal' "$4"
  else
    printf 'misses the %s goal' "$4"
  fi
}

# The Envoy counters reported with a run, as `VARIANT COUNTER` (http.ingress_http. omitted).
counters=(
  "ext_authz ext_authz.ok" "ext_authz ext_authz.denied" "ext_authz ext_authz.error"
  "ext_authz ext_authz.failure_mode_allowed" "noop ext_authz.ok" "noop ext_authz.error"
  "jwt_authn jwt_authn.jwt_cache_hit" "jwt_authn jwt_authn.jwt_cache_miss"
  "uncached ext_authz.ok" "uncached ext_authz.denied" "uncached ext_authz.error"
)

# read_counters: the values of $counters, one a line, from the variants' admin /stats.
read_counters() {
  local entry variant name value
  for entry in "${counters[@]}"; do
    read -r variant name <<<"$entry"
    value=$(http "http://127.0.0.1:${envoy_admin[$variant]}/stats?filter=^http\.ingress_http\.$name\$" |
      awk -F': ' '{ print $2; exit }')
    printf '%s\n' "${value:-0}"
  done
}

# --- the run ------------------------------------------------------------------------------------------

bench_command() {
  local record=false args="$*"
  rounds=3 duration=15 warmup=3 connections=16 threads=1 pin=false noop_answer=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --record) record=true && shift ;;
      --rounds) rounds=${2:?} && shift 2 ;;
      --duration) duration=${2:?} && shift 2 ;;
      --warmup) warmup=${2:?} && shift 2 ;;
      --connections) connections=${2:?} && shift 2 ;;
      --threads) threads=${2:?} && shift 2 ;;
      --pin) pin=true && shift ;;
      --noop-like-quay-authz) noop_answer=(--like-quay-authz) && shift ;;
      *) fail "unknown argument '$1' (see --help)" ;;
    esac
  done
  local arg
  for arg in "$rounds" "$duration" "$warmup" "$connections" "$threads"; do
    [[ "$arg" =~ ^[1-9][0-9]*$ ]] || fail "'$arg' is not a positive whole number"
  done
  local tool
  for tool in curl wrk python3 cargo; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is needed (scripts/setup.sh installs wrk)"
  done
  [ -x "$envoy_bin" ] || fail "no Envoy at $envoy_bin; run scripts/setup.sh (or set ENVOY_BIN)"
  envoy_cpus=${ENVOY_CPUS:-0}
  aux_cpus=${AUX_CPUS:-1}
  if [ "$pin" = true ] && { ! command -v taskset >/dev/null 2>&1 || [ "$(nproc)" -lt 2 ]; }; then
    say "taskset missing or fewer than 2 CPUs: not pinning"
    pin=false
  fi

  say "cargo build --release --bin quay-authz --bin quay-authz-bench"
  cargo build --release --quiet --bin quay-authz --bin quay-authz-bench
  [ -x "$quay_authz" ] || fail "no binary at $quay_authz after cargo build"
  [ -x "$quay_authz_bench" ] || fail "no binary at $quay_authz_bench after cargo build"

  local load_before
  load_before=$(uptime)
  work=$(mktemp -d "${TMPDIR:-/tmp}/quay-authz-envoy-bench.XXXXXX")
  trap on_exit EXIT
  trap 'exit 130' INT TERM

  local ports
  read -r -a ports <<<"$(free_ports 20)"
  local issuer_port=${ports[0]} grpc_port=${ports[1]} http_port=${ports[2]} admin_port=${ports[3]}
  local upstream_port=${ports[4]} upstream_admin=${ports[5]} noop_port=${ports[14]}
  local uncached_grpc=${ports[15]} uncached_http=${ports[16]} uncached_admin=${ports[17]}
  declare -gA listen_port=([none]=${ports[6]} [jwt_authn]=${ports[7]} [ext_authz]=${ports[8]} [noop]=${ports[12]}
    [uncached]=${ports[18]})
  declare -gA envoy_admin=([none]=${ports[9]} [jwt_authn]=${ports[10]} [ext_authz]=${ports[11]} [noop]=${ports[13]}
    [uncached]=${ports[19]})
  declare -gA authz_port=([none]=$grpc_port [jwt_authn]=$grpc_port [ext_authz]=$grpc_port [noop]=$noop_port
    [uncached]=$uncached_grpc)

  # The dev issuer writes config.yaml (trusting it) and the tokens; quay-authz gets this run's
  # ports instead of the quickstart's.
  start_bg issuer "$aux_cpus" "$quay_authz" dev-issuer --listen "127.0.0.1:$issuer_port" --out "$work/issuer"
  wait_for issuer "config.yaml and tokens written" issuer_files
  sed -e "s/^\(  grpc: \).*/\1127.0.0.1:$grpc_port/" -e "s/^\(  http: \).*/\1127.0.0.1:$http_port/" \
    -e "s/^\(  admin: \).*/\1127.0.0.1:$admin_port/" "$work/issuer/config.yaml" >"$work/quay-authz.yaml"
  grep -q "grpc: 127.0.0.1:$grpc_port\$" "$work/quay-authz.yaml" ||
    fail "could not set the listen ports in the dev issuer's config.yaml"
  local issuer
  issuer=$(sed -n 's/^ *issuer: *\(http[^ ]*\).*/\1/p' "$work/quay-authz.yaml" | head -n 1)
  [ -n "$issuer" ] || fail "no issuer URL in $work/quay-authz.yaml"
  http --fail "http://127.0.0.1:$issuer_port/jwks" | tr -d '\n' >"$work/jwks.json"
  grep -q '"keys"' "$work/jwks.json" || fail "the dev issuer's /jwks has no keys"
  printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$(tr -d '[:space:]' <"$work/issuer/allowed.token")" >"$work/token.lua"
  # (e) and (f): distinct valid tokens, granted the pull as allowed.token is (group
  # acme-developers), minted by the dev issuer's /token in one curl; an hour is longer than a run.
  local i token_urls=()
  for ((i = 1; i <= rotating_tokens; i++)); do
    token_urls+=("http://127.0.0.1:$issuer_port/token?sub=bench-$i&groups=acme-developers&lifetime=3600")
  done
  http --fail "${token_urls[@]}" | grep -v '^$' >"$work/rotating.tokens" ||
    fail "could not mint $rotating_tokens tokens from the dev issuer's /token"
  [ "$(sort -u "$work/rotating.tokens" | wc -l)" -eq "$rotating_tokens" ] ||
    fail "the dev issuer did not mint $rotating_tokens distinct tokens"
  write_rotating_lua "$work/rotating.tokens" >"$work/rotating.lua"
  # (e)'s quay-authz: the same configuration on its own ports, with the verified-token cache off.
  sed -e "s/^\(  grpc: \).*/\1127.0.0.1:$uncached_grpc/" -e "s/^\(  http: \).*/\1127.0.0.1:$uncached_http/" \
    -e "s/^\(  admin: \).*/\1127.0.0.1:$uncached_admin/" "$work/issuer/config.yaml" >"$work/quay-authz-uncached.yaml"
  grep -q '^limits:' "$work/quay-authz-uncached.yaml" &&
    fail "the dev issuer's config.yaml now has a limits: section; set token_cache_entries: 0 in it"
  printf 'limits:\n  token_cache_entries: 0\n' >>"$work/quay-authz-uncached.yaml"

  start_bg quay-authz "$aux_cpus" "$quay_authz" serve --config "$work/quay-authz.yaml"
  wait_for quay-authz "ready (keys fetched)" readyz "$http_port"
  start_bg quay-authz-uncached "$aux_cpus" "$quay_authz" serve --config "$work/quay-authz-uncached.yaml"
  wait_for quay-authz-uncached "ready (keys fetched)" readyz "$uncached_http"
  start_bg noop "$aux_cpus" "$quay_authz_bench" noop "${noop_answer[@]}" --listen "127.0.0.1:$noop_port"
  wait_for noop "listening on :$noop_port" port_open "$noop_port"

  render_upstream "$work/upstream.yaml" "$upstream_port" "$upstream_admin"
  start_envoy upstream "$work/upstream.yaml" "$upstream_admin" "$aux_cpus"

  local variant url
  for variant in "${variants[@]}"; do
    render_variant "$variant" "$work/$variant.yaml" "${listen_port[$variant]}" \
      "${envoy_admin[$variant]}" "$upstream_port" "${authz_port[$variant]}" "$issuer" "$work/jwks.json"
    start_envoy "envoy-$variant" "$work/$variant.yaml" "${envoy_admin[$variant]}" "$envoy_cpus"
  done

  # Each variant does what it is meant to before anything is timed.
  local allowed="$work/issuer/allowed.token" denied="$work/issuer/denied.token"
  for variant in "${variants[@]}"; do
    url="http://127.0.0.1:${listen_port[$variant]}$bench_path"
    expect_status "$variant" 200 "$url" "$allowed" "valid token"
  done
  # (d) allows everything by design: its Checks must reach the no-op server, not fail open.
  local noop_ok
  noop_ok=$(http "http://127.0.0.1:${envoy_admin[noop]}/stats?filter=^http\.ingress_http\.ext_authz\.ok\$" | awk -F': ' '{ print $2; exit }')
  [ "${noop_ok:-0}" -ge 1 ] || fail "noop: Envoy's ext_authz.ok did not count the check (is the no-op server reached?)"
  say "noop: ext_authz.ok → $noop_ok"
  url="http://127.0.0.1:${listen_port[jwt_authn]}$bench_path"
  expect_status jwt_authn 401 "$url" "" "no token"
  url="http://127.0.0.1:${listen_port[ext_authz]}$bench_path"
  expect_status ext_authz 401 "$url" "" "no token"
  expect_status ext_authz 403 "$url" "$denied" "token without a grant"
  url="http://127.0.0.1:${listen_port[uncached]}$bench_path"
  expect_status uncached 401 "$url" "" "no token"
  expect_status uncached 403 "$url" "$denied" "token without a grant"
  head -n 1 "$work/rotating.tokens" >"$work/first.token"
  tail -n 1 "$work/rotating.tokens" >"$work/last.token"
  for variant in uncached noop; do
    url="http://127.0.0.1:${listen_port[$variant]}$bench_path"
    expect_status "$variant" 200 "$url" "$work/first.token" "first rotating token"
    expect_status "$variant" 200 "$url" "$work/last.token" "last rotating token"
  done

  say "warm-up: ${warmup}s per load"
  local load
  for load in "${loads[@]}"; do
    run_wrk "$load" "$warmup" "$work/warmup-$load.txt"
  done
  # The counters of the timed runs only.
  local before
  before=$(read_counters)

  local round results=()
  for ((round = 1; round <= rounds; round++)); do
    for load in "${loads[@]}"; do
      say "round $round/$rounds: $load, ${duration}s"
      run_wrk "$load" "$duration" "$work/wrk-$round-$load.txt"
      results+=("$round $load $(parse_wrk "$work/wrk-$round-$load.txt")")
    done
  done
  local load_after
  load_after=$(uptime)
  # (e) measured what it is meant to only if its cache stayed off: no entry, no hit.
  local uncached_metrics
  uncached_metrics=$(http --fail "http://127.0.0.1:$uncached_http/metrics") ||
    fail "quay-authz-uncached: /metrics did not answer"
  printf '%s\n' "$uncached_metrics" | awk '
    /^quay_authz_token_cache_entries / && $2 != 0 { bad = 1 }
    /^quay_authz_token_cache_lookups_total\{.*result="hit"/ && $NF != 0 { bad = 1 }
    END { exit bad }' || fail "quay-authz-uncached reports cache entries or hits: its cache was not off"

  # `name +N` per counter, for the timed runs.
  local deltas
  deltas=$(paste -d ' ' <(printf '%s\n' "${counters[@]}") <(printf '%s\n' "$before") <(read_counters) |
    awk '{
      label = $2 "`" ($1 == "noop" ? " of (d) and (f)" : $1 == "uncached" ? " of (e)" : "")
      printf "%s`%s +%d", (NR > 1 ? ", " : ""), label, $4 - $3
    }')

  local report
  report=$(report_markdown "$load_before" "$load_after" "$deltas" "$args" "${results[@]}")
  printf '%s\n' "$report"
  if [ "$record" = true ]; then
    record_run "$report"
    say "recorded in BENCHMARKS.md"
  fi
  # Non-2xx answers or socket errors mean some requests were not what was measured: say so loudly.
  if printf '%s\n' "${results[@]}" | awk '$7 != 0 || $8 != 0 { bad = 1 } END { exit !bad }'; then
    keep_work=true
    say "WARNING: wrk saw non-2xx responses or socket errors (see the table); wrk output kept"
  fi
}

# report_markdown LOAD_BEFORE LOAD_AFTER COUNTERS ARGS RESULT...: the run as a Markdown block.
# A RESULT is `round variant rps p50 p90 p99 non2xx errors`.
report_markdown() {
  local load_before=$1 load_after=$2 counters=$3 args=$4
  shift 4
  local results=("$@") variant
  declare -A rps p50 p90 p99 non2xx errors
  for variant in "${loads[@]}"; do
    rps[$variant]=$(printf '%s\n' "${results[@]}" | awk -v v="$variant" '$2 == v { print $3 }' | median)
    p50[$variant]=$(printf '%s\n' "${results[@]}" | awk -v v="$variant" '$2 == v { print $4 }' | median)
    p90[$variant]=$(printf '%s\n' "${results[@]}" | awk -v v="$variant" '$2 == v { print $5 }' | median)
    p99[$variant]=$(printf '%s\n' "${results[@]}" | awk -v v="$variant" '$2 == v { print $6 }' | median)
    non2xx[$variant]=$(printf '%s\n' "${results[@]}" | awk -v v="$variant" '$2 == v { n += $7 } END { print n + 0 }')
    errors[$variant]=$(printf '%s\n' "${results[@]}" | awk -v v="$variant" '$2 == v { n += $8 } END { print n + 0 }')
  done
  local envoy_version wrk_version commit pinning
  # `envoy --version` prints `… version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
  envoy_version=$("$envoy_bin" --version | sed -n 's|.*version: [0-9a-f]*/\([0-9][0-9.]*\)/.*|\1|p' | head -n 1)
  wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }' || true)
  commit=$(git rev-parse --short HEAD)
  if ! git diff --quiet HEAD -- src Cargo.toml Cargo.lock deploy/envoy scripts/bench; then
    commit="$commit (with uncommitted changes)"
  fi
  if [ "$pin" = true ]; then
    pinning="Envoy under test on CPU $envoy_cpus; wrk, the upstream Envoy, quay-authz and the dev issuer on CPU $aux_cpus (taskset)"
  else
    pinning="none"
  fi
  cat <<EOF
### Run of $(date -u '+%Y-%m-%d %H:%M UTC')

Command: \`${QUAY_AUTHZ_LOG:+QUAY_AUTHZ_LOG=$QUAY_AUTHZ_LOG }scripts/bench/envoy_compare.sh${args:+ $args}\` at commit $commit.
Envoy $envoy_version (\`--concurrency 1\`), $wrk_version: \`-t$threads -c$connections -d${duration}s --latency\`,
one valid token ((a)-(d)) or $rotating_tokens in rotation ((e), (f)), \`GET $bench_path\`; ${warmup} s untimed
warm-up per variant, then $rounds round(s) of (a)-(f), interleaved. $(nproc) CPUs; pinning: $pinning.
Load before: \`${load_before# }\`; after: \`${load_after# }\`.
$(overload_note "${load_before#*load average: }")

| variant | rps (median of $rounds) | p50 | p90 | p99 | non-2xx | socket errors |
| --- | --- | --- | --- | --- | --- | --- |
EOF
  local label
  for variant in "${loads[@]}"; do
    case "$variant" in
      none) label="(a) no auth" ;;
      jwt_authn) label="(b) \`jwt_authn\`, local JWKS + JWT cache" ;;
      ext_authz) label="(c) \`ext_authz\` → quay-authz" ;;
      noop) label="(d) \`ext_authz\` → no-op server (\`quay-authz-bench noop${noop_answer[*]:+ ${noop_answer[*]}}\`)" ;;
      uncached) label="(e) \`ext_authz\` → quay-authz, cache off, $rotating_tokens rotating tokens" ;;
      noop_rotating) label="(f) \`ext_authz\` → no-op server, $rotating_tokens rotating tokens" ;;
    esac
    printf '| %s | %.0f | %.2f ms | %.2f ms | %.2f ms | %s | %s |\n' "$label" "${rps[$variant]}" \
      "${p50[$variant]}" "${p90[$variant]}" "${p99[$variant]}" "${non2xx[$variant]}" "${errors[$variant]}"
  done
  local to_noop to_jwt p99_to_noop
  to_noop=$(ratio "${rps[ext_authz]}" "${rps[noop]}")
  to_jwt=$(ratio "${rps[ext_authz]}" "${rps[jwt_authn]}")
  p99_to_noop=$(ratio "${p99[ext_authz]}" "${p99[noop]}")
  local rotating_rps rotating_p99
  rotating_rps=$(ratio "${rps[uncached]}" "${rps[noop_rotating]}")
  rotating_p99=$(ratio "${p99[uncached]}" "${p99[noop_rotating]}")
  cat <<EOF

Ratios of the median rps: **quay-authz / no-op ext_authz = $to_noop** ($(goal_note "$to_noop" ">=" 0.95 "≥ 0.95"));
**quay-authz / jwt_authn = $to_jwt** ($(goal_note "$to_jwt" ">=" 0.8 "≥ 0.8"));
no-op ext_authz / jwt_authn = $(ratio "${rps[noop]}" "${rps[jwt_authn]}"); ext_authz / no auth = $(ratio "${rps[ext_authz]}" "${rps[none]}");
jwt_authn / no auth = $(ratio "${rps[jwt_authn]}" "${rps[none]}"). p99 of quay-authz / p99 of the no-op: **$p99_to_noop×**
($(goal_note "$p99_to_noop" "<=" 1.2 "≤ 1.2×")).
**quay-authz, $rotating_tokens rotating tokens, cache off / no-op = $rotating_rps** (rps, $(goal_note "$rotating_rps" ">=" 0.85 "≥ 0.85"));
its p99 / the no-op's p99 with the same tokens: $rotating_p99×. Cached (c) / cache off (e): $(ratio "${rps[ext_authz]}" "${rps[uncached]}").

| round | no auth rps | jwt_authn rps | ext_authz rps | no-op rps | ext_authz / no-op | ext_authz / jwt_authn | jwt_authn / no auth | cache off, rotating rps | no-op, rotating rps | (e) / (f) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
EOF
  local round a b c d e f
  for ((round = 1; round <= rounds; round++)); do
    a=$(printf '%s\n' "${results[@]}" | awk -v r="$round" '$1 == r && $2 == "none" { print $3 }')
    b=$(printf '%s\n' "${results[@]}" | awk -v r="$round" '$1 == r && $2 == "jwt_authn" { print $3 }')
    c=$(printf '%s\n' "${results[@]}" | awk -v r="$round" '$1 == r && $2 == "ext_authz" { print $3 }')
    d=$(printf '%s\n' "${results[@]}" | awk -v r="$round" '$1 == r && $2 == "noop" { print $3 }')
    e=$(printf '%s\n' "${results[@]}" | awk -v r="$round" '$1 == r && $2 == "uncached" { print $3 }')
    f=$(printf '%s\n' "${results[@]}" | awk -v r="$round" '$1 == r && $2 == "noop_rotating" { print $3 }')
    printf '| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$round" "$a" "$b" "$c" "$d" \
      "$(ratio "$c" "$d")" "$(ratio "$c" "$b")" "$(ratio "$b" "$a")" "$e" "$f" "$(ratio "$e" "$f")"
  done
  printf '\nEnvoy counters over the timed runs: %s.\n' "$counters"
}

# record_run REPORT: puts REPORT first among the runs of the BENCHMARKS.md section (creating the
# section at the end if it is missing) and keeps the newest $runs_kept runs. Text of the section
# outside the markers (the discussion) is left as it is.
record_run() {
  local file=BENCHMARKS.md report_file="$work/report.md"
  printf '%s\n' "$1" >"$report_file"
  if ! grep -qF -- "$runs_begin" "$file"; then
    printf '\n%s\n\n%s\n%s\n' "$section_heading" "$runs_begin" "$runs_end" >>"$file"
  fi
  awk -v begin="$runs_begin" -v end="$runs_end" -v report="$report_file" -v kept="$runs_kept" '
    $0 == begin {
      print; print ""
      while ((getline line < report) > 0) print line
      print ""
      inside = 1; runs = 1; next
    }
    $0 == end { inside = 0; print; next }
    inside && /^### Run / { runs++ }
    inside && runs > kept { next }
    inside && runs == 1 && /^ *$/ { next } # blank lines before the first old run
    { print }
  ' "$file" >"$file.tmp" && mv "$file.tmp" "$file"
}

case "${1:-}" in
  render) shift && render_command "$@" ;;
  -h | --help | help) sed -n '2,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) bench_command "$@" ;;
esac
