#!/usr/bin/env bash
# Instructions per delivery on the core's message path (crates/starling-broker/benches/route.rs),
# counted by callgrind, for one or more builds of that benchmark: instruction counts do not
# depend on what else the machine runs, where times on a shared 2-core machine move by tens of
# per cent. Each benchmark runs twice under callgrind, with N1 and N2 iterations, counting only
# inside `Bed::run`; the difference divided by (N2 - N1) iterations and by the deliveries of one
# iteration is the cost of one delivery, without the set-up.
#
#   bench/route-cost.sh LABEL=PATH [LABEL=PATH ...]
#
# PATH is a `route` benchmark executable (`cargo bench -p starling-broker --bench route
# --no-run` prints it). For an older commit: check it out in a worktree, copy route.rs into
# its crates/starling-broker/benches (with its [[bench]] section; a build before queue scopes
# has only the session-scope benchmarks), and build it with a target directory of its own.
# Prints one JSON line per (label, benchmark).
set -euo pipefail
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }
N1=${N1:-5}
N2=${N2:-15}
WORK=$(mktemp -d /tmp/route-cost.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Deliveries in one iteration of each benchmark (route.rs: batches of 100 PUBLISHes).
declare -A PER=([fan_out_qos0]=10000 [fan_out_qos1]=10000 [fan_in]=1000 [p2p_qos0]=1000)
count() { # exe filter iterations -> instructions inside Bed::run
    valgrind --tool=callgrind --toggle-collect='route::Bed::run' \
        --callgrind-out-file="$WORK/out" "$1" --bench "$2" \
        --sample-count "$3" --sample-size 1 >/dev/null 2>&1
    grep -m1 '^summary:' "$WORK/out" | awk '{print $2}'
}
for spec in "$@"; do
    label=${spec%%=*}
    exe=${spec#*=}
    # Filters are substrings of the full names: `route::fan_in` is the session scope alone.
    for bench in "${!PER[@]}" $(for b in "${!PER[@]}"; do echo "subscription::$b"; done); do
        base=${bench#subscription::}
        filter=$bench
        [ "$base" = "$bench" ] && filter="route::$bench"
        a=$(count "$exe" "$filter" "$N1")
        b=$(count "$exe" "$filter" "$N2")
        # Not in this build (the subscription scope before it existed).
        [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ] || continue
        python3 -c "import json; print(json.dumps({'label': '$label', 'bench': '$bench', \
'instructions_per_delivery': round(($b - $a) / ($N2 - $N1) / ${PER[$base]}, 1)}))"
    done
done
