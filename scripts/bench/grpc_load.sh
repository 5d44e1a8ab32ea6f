#!/usr/bin/env bash
# gRPC load: quay-authz against a no-op ext_authz server built on the same tonic stack, in one
# run, on loopback. Writes the "gRPC load (quay-authz vs no-op server)" section of BENCHMARKS.md.
#
#   scripts/bench/grpc_load.sh
#
# Four servers, loaded in turn, ROUNDS times (medians are reported):
#   - no-op server        `quay-authz-bench noop`: answers every Check OK at once;
#   - no-op, quay-authz's answer  `quay-authz-bench noop --like-quay-authz`: answers at once
#                         with the OK quay-authz gives an allowed Check (identity headers, headers
#                         to remove, dynamic metadata): the transport's cost of that answer;
#   - quay-authz, cached  the quickstart config, one valid token (verified-token cache hits);
#   - quay-authz, uncached the same config with `limits.token_cache_entries: 0` and
#                         DISTINCT_TOKENS different tokens: every Check verifies an RS256 signature.
# Each in two CPU layouts (MODES): `pinned` puts every server on CPU 0 and the load generator on
# CPU 1 (taskset), so neither steals the other's core; `shared` lets all of them use both cores.
#
# Settings (environment): ROUNDS=3 DURATION=10 WARMUP=2 CONCURRENCY=64 CONNECTIONS=2
# DISTINCT_TOKENS=256 MODES="pinned shared" PORT_BASE=19100 WRITE=1 (0: print, do not write).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

rounds=${ROUNDS:-3}
duration=${DURATION:-10}
warmup=${WARMUP:-2}
concurrency=${CONCURRENCY:-64}
connections=${CONNECTIONS:-2}
distinct_tokens=${DISTINCT_TOKENS:-256}
modes=${MODES:-pinned shared}
port_base=${PORT_BASE:-19100}
write=${WRITE:-1}
section_title="gRPC load (quay-authz vs no-op server)"

# shellcheck source=scripts/bench/machine_load.sh
source "$repo_root/scripts/bench/machine_load.sh"

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
bin="$target_dir/release"

echo "building release binaries..." >&2
cargo build --release --bins --quiet

work=$(mktemp -d -t quay-authz-grpc-load-XXXXXX)
pids=()
cleanup() { # keeps $work (the servers' logs) when the run failed
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status == 0 ]]; then
        rm -rf "$work"
    else
        echo "logs and configs kept in $work" >&2
    fi
}
trap cleanup EXIT

issuer_port=$port_base
noop_port=$((port_base + 1))
cached_ports=($((port_base + 2)) $((port_base + 3)) $((port_base + 4)))
uncached_ports=($((port_base + 5)) $((port_base + 6)) $((port_base + 7)))
answer_port=$((port_base + 8))

wait_for() { # wait_for DESCRIPTION COMMAND...: retry for up to 30 s
    local what=$1
    shift
    for _ in $(seq 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $what; logs in $work" >&2
    exit 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cpu_prefix() { # cpu_prefix MODE ROLE: the taskset prefix for a role (server, load)
    if [[ $1 == pinned ]]; then
        if [[ $2 == server ]]; then echo "taskset -c 0"; else echo "taskset -c 1"; fi
    fi
}

# A server per role; restarted per mode so its CPU affinity (and so its runtime's thread
# count) follows the mode.
start_servers() { # start_servers MODE
    local prefix
    prefix=$(cpu_prefix "$1" server)
    $prefix "$bin/quay-authz-bench" noop --listen "127.0.0.1:$noop_port" 2>"$work/noop.log" &
    noop_pid=$!
    pids+=($!)
    $prefix "$bin/quay-authz-bench" noop --like-quay-authz --listen "127.0.0.1:$answer_port" 2>"$work/answer.log" &
    answer_pid=$!
    pids+=($!)
    QUAY_AUTHZ_LOG=warn $prefix "$bin/quay-authz" serve --config "$work/cached.yaml" 2>"$work/cached.log" &
    cached_pid=$!
    pids+=($!)
    QUAY_AUTHZ_LOG=warn $prefix "$bin/quay-authz" serve --config "$work/uncached.yaml" 2>"$work/uncached.log" &
    uncached_pid=$!
    pids+=($!)
    wait_for "the no-op server" port_open "$noop_port"
    wait_for "the no-op server with quay-authz's answer" port_open "$answer_port"
    wait_for "quay-authz (cached)" curl -fsS "http://127.0.0.1:${cached_ports[1]}/readyz"
    wait_for "quay-authz (uncached)" curl -fsS "http://127.0.0.1:${uncached_ports[1]}/readyz"
}
stop_servers() {
    local keep=("${pids[0]}")
    for pid in "${pids[@]:1}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=("${keep[@]}")
}

# The development issuer: its config and tokens, reused by every mode.
"$bin/quay-authz" dev-issuer --listen "127.0.0.1:$issuer_port" --out "$work/issuer" 2>"$work/issuer.log" &
pids+=($!)
wait_for "the development issuer" test -f "$work/issuer/config.yaml"

configure() { # configure PORTS...: the quickstart config on these grpc, http, admin ports
    sed -e "s/127.0.0.1:9191/127.0.0.1:$1/" -e "s/127.0.0.1:9090/127.0.0.1:$2/" \
        -e "s/127.0.0.1:9192/127.0.0.1:$3/" "$work/issuer/config.yaml"
}
configure "${cached_ports[@]}" >"$work/cached.yaml"
{
    configure "${uncached_ports[@]}"
    printf 'limits:\n  token_cache_entries: 0\n'
} >"$work/uncached.yaml"

cp "$work/issuer/allowed.token" "$work/one.tokens"
echo "fetching $distinct_tokens tokens from the development issuer..." >&2
for i in $(seq "$distinct_tokens"); do
    curl -fsS "http://127.0.0.1:$issuer_port/token?sub=bench-$i&groups=acme-developers"
done >"$work/distinct.tokens"

uptime_before=$(uptime)
commit=$(git rev-parse --short HEAD)
tables=""
for mode in $modes; do
    echo "mode $mode: starting servers" >&2
    start_servers "$mode"
    load_prefix=$(cpu_prefix "$mode" load)
    runs="$work/runs-$mode.jsonl"
    : >"$runs"
    for round in $(seq "$rounds"); do
        for target in noop answer cached uncached; do
            case $target in
                noop) port=$noop_port pid=$noop_pid tokens=one label="no-op server" ;;
                answer) port=$answer_port pid=$answer_pid tokens=one label="no-op server, quay-authz's answer" ;;
                cached) port=${cached_ports[0]} pid=$cached_pid tokens=one label="quay-authz, cached token" ;;
                uncached) port=${uncached_ports[0]} pid=$uncached_pid tokens=distinct label="quay-authz, uncached ($distinct_tokens tokens, cache off)" ;;
            esac
            echo "mode $mode, round $round: $label" >&2
            $load_prefix "$bin/quay-authz-bench" load --target "http://127.0.0.1:$port" \
                --tokens "$work/$tokens.tokens" --concurrency "$concurrency" \
                --connections "$connections" --duration "$duration" --warmup "$warmup" \
                --server-pid "$pid" --label "$label" --json >>"$runs"
        done
    done
    stop_servers
    table=$("$bin/quay-authz-bench" summarize --baseline "no-op server" --goal-ratio 0.85 \
        --goal-p99-us 1000 "$runs")
    case $mode in
        pinned) layout="servers on CPU 0, load generator on CPU 1 (\`taskset\`): each side has one core" ;;
        *) layout="no pinning: servers and load generator share both cores" ;;
    esac
    tables+=$(printf '### %s\n\n%s.\n\n%s\n\n' "$mode" "$layout" "$table")
    tables+=$'\n\n'
done
uptime_after=$(uptime)

body=$(
    cat <<EOF
Command: \`scripts/bench/grpc_load.sh\` (ROUNDS=$rounds DURATION=$duration WARMUP=$warmup
CONCURRENCY=$concurrency CONNECTIONS=$connections DISTINCT_TOKENS=$distinct_tokens).
Run on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $commit. Machine load before:
\`${uptime_before#*load average: }\`, after: \`${uptime_after#*load average: }\` (1, 5, 15 min).

\`quay-authz-bench load\` keeps $concurrency Checks in flight over $connections HTTP/2
connections for $duration s after a $warmup s warm-up, $rounds rounds per server, servers
loaded in turn within each round; figures are medians over the rounds, and the ratio compares
medians from this run. Each Check is \`GET /v2/acme/app/manifests/latest\` for
\`quay.example.com\` with a bearer token and the headers Envoy forwards. The no-op server is
\`quay-authz-bench noop\`: the same tonic server, answering OK at once, so its figure is what
the transport and the load generator allow. "no-op server, quay-authz's answer" answers at once
too, but with the OK quay-authz gives an allowed Check (\`--like-quay-authz\`: identity headers,
headers to remove, dynamic metadata): between it and the no-op is what the answer's size costs
the transport, between it and quay-authz what the decision costs. The uncached case sets
\`limits.token_cache_entries: 0\`, so every Check decodes the token and verifies its RS256
signature. "server CPU µs/Check" is the server process's own CPU time (user + system, from
\`/proc/PID/stat\`) over the measured window divided by the Checks answered in it: what the
server spends per Check, apart from what the load generator takes of the shared cores.

$(overload_note "${uptime_before#*load average: }")

${tables}
Goals: ≥ 0.85× the no-op server's rps, p99 ≤ 1 ms at 64 streams on 2 cores. The machine has 2
cores in all, so the load generator always competes with the server: pinned, the server has
one core (half the goal's); shared, the load generator takes part of both cores, and other
work on the machine (see the load average) takes its share too.
EOF
)

if [[ $write == 1 ]]; then
    printf '%s\n' "$body" | "$bin/quay-authz-bench" section --file BENCHMARKS.md --title "$section_title"
    echo "wrote \"$section_title\" to BENCHMARKS.md" >&2
fi
printf '%s\n' "$body"
