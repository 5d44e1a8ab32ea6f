#!/usr/bin/env bash
# Resilience figures against real `quay-authz serve` processes and the development issuer:
# key rotation under load, 100 000 tokens with random kids, RSS with 100 000 cached tokens.
# Writes the "Resilience" section of BENCHMARKS.md.
#
#   scripts/bench/resilience.sh
#
# Settings (environment): TOKENS=100000 ROTATION_PHASE=4 MIN_REFETCH_INTERVAL=5 WRITE=1
# (0: print, do not write). See `quay-authz-bench resilience --help`.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

tokens=${TOKENS:-100000}
rotation_phase=${ROTATION_PHASE:-4}
min_refetch_interval=${MIN_REFETCH_INTERVAL:-5}
write=${WRITE:-1}

# shellcheck source=scripts/bench/machine_load.sh
source "$repo_root/scripts/bench/machine_load.sh"

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
bin="$target_dir/release"

echo "building release binaries..." >&2
cargo build --release --bins --quiet

uptime_before=$(uptime)
figures=$("$bin/quay-authz-bench" resilience --server-bin "$bin/quay-authz" --tokens "$tokens" \
    --rotation-phase "$rotation_phase" --min-refetch-interval "$min_refetch_interval")
uptime_after=$(uptime)

body=$(
    cat <<EOF2
Command: \`scripts/bench/resilience.sh\` (TOKENS=$tokens ROTATION_PHASE=$rotation_phase
MIN_REFETCH_INTERVAL=$min_refetch_interval), which runs \`quay-authz-bench resilience\`.
Run on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $(git rev-parse --short HEAD). Machine load
before: \`${uptime_before#*load average: }\`, after: \`${uptime_after#*load average: }\`.

Each scenario starts its own \`quay-authz serve\` process (release build, default settings but
\`jwks.min_refetch_interval_seconds: $min_refetch_interval\`) against a development issuer in the
bench process, and loads it with 64 Checks in flight over 2 connections (\`GET
/v2/acme/app/manifests/latest\`). Tokens are minted before the load starts.

$(overload_note "${uptime_before#*load average: }")

$figures
EOF2
)

if [[ $write == 1 ]]; then
    printf '%s\n' "$body" | "$bin/quay-authz-bench" section --file BENCHMARKS.md --title "Resilience"
    echo "wrote \"Resilience\" to BENCHMARKS.md" >&2
fi
printf '%s\n' "$body"
