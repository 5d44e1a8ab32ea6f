# Sourced by the benchmark scripts: says when a run cannot be trusted because the machine was
# busy with other work.
overload_note() { # overload_note LOAD_BEFORE: a warning when other work saturated the machine
    local load=${1%%,*} cores
    cores=$(nproc)
    if awk -v load="$load" -v cores="$cores" 'BEGIN { exit !(load > cores) }'; then
        printf '**This run is not representative**: the 1-minute load average was %s on %s cores\n' "$load" "$cores"
        printf 'before it started (other builds running), so every process waited for CPU and latency\n'
        printf 'measures that wait more than quay-authz. Rerun on an otherwise idle machine.\n'
    fi
}
