# Shared by bench/durability.sh and bench/acl.sh (sourced, from the repository root):
# `--rounds N` parsing, the release build, a work directory removed on exit (with any broker
# still running from it), SCHED_RR when allowed, and waiting for a port to accept.
# Usage: . bench/lib.sh NAME "$@"   -> sets ROUNDS, BIN, WORK, RT
# BENCH_BIN=DIR takes the binaries from DIR instead of building them.
ROUNDS=3
_name=$1
shift
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
else
    cargo build --release -q -p starling -p starling-bench
    BIN=${CARGO_TARGET_DIR:-target}/release
fi
WORK=$(mktemp -d "/tmp/starling-$_name.XXXXXX")
trap 'pkill -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
RT="chrt -r 1"
$RT true 2>/dev/null || RT=""

wait_port() { # port: up to 5 s for it to accept a connection
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done
}
