#!/usr/bin/env bash
# Token-exchange endpoint latency (RFC 8693, `bridge.exchange`) with `wrk`, on loopback, with the
# two stores in one run. Writes the "Token exchange endpoint" section of BENCHMARKS.md.
#
#   scripts/bench/exchange_latency.sh
#
# One quay-authz (release build) per store, each on its own ports:
#   - memory   `bridge.store: memory`
#   - redis    `bridge.store: redis://127.0.0.1:PORT/0`, a redis-server started here (no
#              persistence), so every exchange also writes the live-token index and counts the
#              mint in Redis
# Each is loaded in turn, ROUNDS times (medians reported), with two requests:
#   - baseline  GET /healthz on the same HTTP listener: the HTTP stack's own floor
#   - exchange  POST /oauth2/token: a development-issuer RS256 token exchanged for a scoped
#               token (verify the subject token — a verified-token cache hit after the first —,
#               evaluate the rules, count the mint, sign RS256, record it)
# The mint limit is raised so the load is never refused; a non-2xx answer fails the run.
#
# Settings (environment): ROUNDS=3 DURATION=10 WARMUP=2 CONNECTIONS=8 THREADS=1
# PORT_BASE=19300 WRITE=1 (0: print, do not write).
# Needs: wrk, redis-server, openssl, curl (scripts/setup.sh), cargo.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

rounds=${ROUNDS:-3}
duration=${DURATION:-10}
warmup=${WARMUP:-2}
connections=${CONNECTIONS:-8}
threads=${THREADS:-1}
port_base=${PORT_BASE:-19300}
write=${WRITE:-1}
section_title="Token exchange endpoint"

# shellcheck source=scripts/bench/machine_load.sh
source "$repo_root/scripts/bench/machine_load.sh"

for tool in wrk redis-server openssl curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
bin="$target_dir/release"
echo "building release binaries..." >&2
cargo build --release --bins --quiet

work=$(mktemp -d -t quay-authz-exchange-XXXXXX)
pids=()
cleanup() { # keeps $work (the servers' logs) when the run failed
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ $status == 0 ]]; then rm -rf "$work"; else echo "logs and configs kept in $work" >&2; fi
}
trap cleanup EXIT

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

issuer_port=$port_base
redis_port=$((port_base + 1))
memory_ports=($((port_base + 2)) $((port_base + 3)) $((port_base + 4)))
redis_ports=($((port_base + 5)) $((port_base + 6)) $((port_base + 7)))

"$bin/quay-authz" dev-issuer --listen "127.0.0.1:$issuer_port" --out "$work/issuer" 2>"$work/issuer.log" &
pids+=($!)
wait_for "the development issuer" test -f "$work/issuer/config.yaml"

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for "redis-server" redis-cli -p "$redis_port" ping

openssl genrsa -out "$work/bridge.pem" 2048 2>/dev/null

configure() { # configure STORE GRPC HTTP ADMIN: the quickstart config, exchanged through the bridge
    sed -e "s/127.0.0.1:9191/127.0.0.1:$2/" -e "s/127.0.0.1:9090/127.0.0.1:$3/" \
        -e "s/127.0.0.1:9192/127.0.0.1:$4/" \
        -e "s/^    algorithms: \[RS256, ES256\]$/    algorithms: [RS256, ES256]\n    upstream: exchange/" \
        "$work/issuer/config.yaml"
    cat <<EOF
bridge:
  issuer: http://127.0.0.1:$3/bridge
  audience: quay-authz
  signing_keys: [$work/bridge.pem]
  exchange:
    mints_per_principal_per_minute: 1000000000
  store: $1
EOF
}
configure memory "${memory_ports[@]}" >"$work/memory.yaml"
configure "redis://127.0.0.1:$redis_port/0" "${redis_ports[@]}" >"$work/redis.yaml"

QUAY_AUTHZ_LOG=warn "$bin/quay-authz" serve --config "$work/memory.yaml" 2>"$work/memory.log" &
pids+=($!)
QUAY_AUTHZ_LOG=warn "$bin/quay-authz" serve --config "$work/redis.yaml" 2>"$work/redis-authz.log" &
pids+=($!)
wait_for "quay-authz (memory)" curl -fsS "http://127.0.0.1:${memory_ports[1]}/readyz"
wait_for "quay-authz (redis)" curl -fsS "http://127.0.0.1:${redis_ports[1]}/readyz"

# The request wrk sends, and a summary line it prints when done.
export SUBJECT_TOKEN
SUBJECT_TOKEN=$(cat "$work/issuer/allowed.token")
# Both scripts end with the same summary line, printed when wrk is done.
cat >"$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local errors = summary.errors.connect + summary.errors.read + summary.errors.write
        + summary.errors.timeout
    io.write(string.format("RESULT %.1f %d %d %d %d\n",
        summary.requests / (summary.duration / 1e6), latency:percentile(50),
        latency:percentile(99), summary.errors.status, errors))
end
EOF
cat - "$work/report.lua" >"$work/exchange.lua" <<'EOF'
local token = os.getenv("SUBJECT_TOKEN")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
    .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
    .. "&scope=repo%3Aread+on+acme%2Fapp"
    .. "&subject_token=" .. token
EOF
cp "$work/report.lua" "$work/get.lua"

# One exchange by hand first: the run measures the endpoint only if it answers 200.
check_exchange() { # check_exchange HTTP_PORT
    local status
    status=$(curl -s -o "$work/answer.json" -w '%{http_code}' \
        "http://127.0.0.1:$1/oauth2/token" \
        --data-urlencode grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
        --data-urlencode subject_token="$SUBJECT_TOKEN" \
        --data-urlencode subject_token_type=urn:ietf:params:oauth:token-type:jwt \
        --data-urlencode "scope=repo:read on acme/app")
    if [[ $status != 200 ]] || ! grep -q '"access_token"' "$work/answer.json"; then
        echo "the exchange on port $1 answered $status (not measuring): $(head -c 300 "$work/answer.json")" >&2
        exit 1
    fi
}
check_exchange "${memory_ports[1]}"
check_exchange "${redis_ports[1]}"

run_wrk() { # run_wrk SECONDS SCRIPT URL: prints "rps p50_us p99_us non2xx errors"
    wrk -t "$threads" -c "$connections" -d "${1}s" -s "$2" "$3" | awk '/^RESULT/ {print $2, $3, $4, $5, $6}'
}

median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

uptime_before=$(uptime)
declare -A samples
for round in $(seq "$rounds"); do
    for store in memory redis; do
        if [[ $store == memory ]]; then port=${memory_ports[1]}; else port=${redis_ports[1]}; fi
        for kind in baseline exchange; do
            if [[ $kind == baseline ]]; then
                script=$work/get.lua url="http://127.0.0.1:$port/healthz"
            else
                script=$work/exchange.lua url="http://127.0.0.1:$port/oauth2/token"
            fi
            run_wrk "$warmup" "$script" "$url" >/dev/null
            read -r rps p50 p99 non2xx errors < <(run_wrk "$duration" "$script" "$url")
            if [[ $non2xx != 0 || $errors != 0 ]]; then
                echo "$store $kind: $non2xx non-2xx answers, $errors socket errors; logs in $work" >&2
                exit 1
            fi
            echo "round $round $store $kind: $rps rps, p50 ${p50} µs, p99 ${p99} µs" >&2
            samples[$store.$kind.rps]+="$rps "
            samples[$store.$kind.p50]+="$p50 "
            samples[$store.$kind.p99]+="$p99 "
        done
    done
done
uptime_after=$(uptime)

med() { tr ' ' '\n' <<<"${samples[$1]}" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

body=$(
    echo "Command: \`scripts/bench/exchange_latency.sh\` (ROUNDS=$rounds DURATION=$duration" \
        "CONNECTIONS=$connections THREADS=$threads), $(date -u +%Y-%m-%d), commit" \
        "$(git rev-parse --short HEAD). Machine load before: \`${uptime_before#*load average: }\`," \
        "after: \`${uptime_after#*load average: }\` (1, 5, 15 min)."
    echo
    overload_note "${uptime_before#*load average: }"
    echo
    echo "wrk on loopback against one quay-authz per store; medians of $rounds rounds. The" \
        "baseline is \`GET /healthz\` on the same listener in the same round."
    echo
    echo "| store | request | rps | p50 | p99 | p50 / baseline p50 |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
    for store in memory redis; do
        base_p50=$(med "$store.baseline.p50")
        for kind in baseline exchange; do
            printf '| %s | %s | %s | %s µs | %s µs | %s× |\n' "$store" \
                "$([[ $kind == baseline ]] && echo 'GET /healthz' || echo 'POST /oauth2/token')" \
                "$(med "$store.$kind.rps")" "$(med "$store.$kind.p50")" "$(med "$store.$kind.p99")" \
                "$(ratio "$(med "$store.$kind.p50")" "$base_p50")"
        done
    done
    echo
    echo "Redis over memory, exchange p50: $(ratio "$(med redis.exchange.p50)" "$(med memory.exchange.p50)")×," \
        "p99: $(ratio "$(med redis.exchange.p99)" "$(med memory.exchange.p99)")×."
    echo
    echo "wrk keeps $connections requests in flight, so p50 is about $connections / rps: the" \
        "endpoint is bound by CPU, above all the RS256 signature of every issued token" \
        "(the subject token's verification is a verified-token cache hit after the first)." \
        "Redis adds three round trips on loopback (count the mint, record, the script's" \
        "prune), small beside the signature; on a shared 2-core machine the difference" \
        "between the stores is within the rounds' spread."
)
printf '%s\n' "$body"
if [[ $write == 1 ]]; then
    printf '%s\n' "$body" | "$bin/quay-authz-bench" section --file BENCHMARKS.md --title "$section_title"
    echo "wrote \"$section_title\" to BENCHMARKS.md" >&2
fi
