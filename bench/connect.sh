#!/usr/bin/env bash
# Connect rate, Starling beside mosquitto (issue 23, item 2), each with a fresh broker per
# measurement, broker on core 0 and generator on core 1, memory durability:
#   plain     10,000 idle connections, 100 handshakes at a time, anonymous
#   password  2,000 connections, 50 at a time, with a password both brokers check against the
#             same kind of hash: `$7$` PBKDF2-SHA512 with 101 iterations (mosquitto_passwd's
#             default; `starling passwd -H sha512-pbkdf2 -I 101`)
#   argon2id  Starling only, its default hash (`starling passwd`): 200 connections, 10 at a time
#   tls       2,000 connections opened and closed, 10 at a time, TLS 1.3 with the same P-256
#             certificate (made here with openssl), no session resumption; mosquitto also
#             with `set_tcp_nodelay true` (tls-nodelay), which its default leaves off
# With every connection the generator's CPU time is recorded too: on a two-core machine the
# generator's core is often what is full, and then the broker's CPU time per connection is
# the comparable figure. One JSON line per measurement goes to --out (default: a temporary
# file, named at the end).
#
#   bench/connect.sh [--rounds N] [--out FILE]
#
# Traffic goes to 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=3
OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    log "installing mosquitto"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto mosquitto-clients
fi
MOSQUITTO=$(command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto)
cargo build --release -q -p starling -p starling-bench
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

WORK=$(mktemp -d /tmp/starling-connect.XXXXXX)
# mosquitto started as root runs as its own user: it must be able to read these files.
chmod 755 "$WORK"
[ -n "$OUT" ] || OUT="$WORK/connect.jsonl"
: > "$OUT"
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/ext" -out "$WORK/server.pem" 2>/dev/null
chmod 644 "$WORK"/*

"$BIN/starling" passwd -c -b -H sha512-pbkdf2 -I 101 "$WORK/pbkdf2.txt" u secret
"$BIN/starling" passwd -c -b "$WORK/argon2id.txt" u secret
printf 'u:%s\n' "$(cut -d: -f2- "$WORK/pbkdf2.txt")" > "$WORK/mosquitto.passwd"
chmod 644 "$WORK"/*.txt "$WORK/mosquitto.passwd"

PORT=26000
start() { # broker mode
    local broker=$1 mode=$2 dir="$WORK/run"
    rm -rf "$dir"; mkdir -p "$dir"; chmod 755 "$dir"
    PORT=$((PORT + 1))
    case "$broker" in
        starling)
            {
                printf 'log_level = "warn"\n[limits]\nmax_connections = 100000\n'
                printf '[storage]\ndurability = "memory"\n[http]\nenabled = false\n'
                printf '[[listener]]\nbind = "127.0.0.1:%s"\n' "$PORT"
                case "$mode" in
                    plain) printf 'allow_anonymous = true\n' ;;
                    password|argon2id)
                        local f=pbkdf2; [ "$mode" = argon2id ] && f=argon2id
                        printf 'allow_anonymous = false\npassword_file = "%s/%s.txt"\n' "$WORK" "$f" ;;
                    tls)
                        printf 'protocol = "tls"\nallow_anonymous = true\ncert_file = "%s/server.pem"\nkey_file = "%s/server.key"\n' \
                            "$WORK" "$WORK" ;;
                esac
            } > "$dir/starling.toml"
            taskset -c 0 "$BIN/starling" serve --config "$dir/starling.toml" \
                --data-dir "$dir/data" 2>"$dir/log" &
            ;;
        mosquitto)
            {
                printf 'listener %s 127.0.0.1\npersistence false\nlog_dest none\nmax_connections -1\n' "$PORT"
                case "$mode" in
                    plain) printf 'allow_anonymous true\n' ;;
                    password) printf 'allow_anonymous false\npassword_file %s/mosquitto.passwd\n' "$WORK" ;;
                    tls|tls-nodelay)
                        printf 'allow_anonymous true\ncertfile %s/server.pem\nkeyfile %s/server.key\n' "$WORK" "$WORK"
                        [ "$mode" = tls-nodelay ] && printf 'set_tcp_nodelay true\n' ;;
                esac
            } > "$dir/mosquitto.conf"
            taskset -c 0 "$MOSQUITTO" -c "$dir/mosquitto.conf" 2>"$dir/log" &
            ;;
    esac
    pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0; sleep 0.05; done
    log "$broker ($mode) did not start:"; cat "$dir/log" >&2; return 1
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; }

# CPU seconds of every thread of a process (from schedstat, in nanoseconds).
cpu_ns() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{s += $1} END {printf "%.0f", s}'; }

measure() { # broker mode round
    local broker=$1 mode=$2 round=$3 gen b0 b1 g=0 gpid line
    start "$broker" "$mode" || return 0
    b0=$(cpu_ns "$pid")
    case "$mode" in
        plain) gen=(--scenario connections --connections 10000 --concurrency 100) ;;
        password) gen=(--scenario connections --connections 2000 --concurrency 50
                       --username u --password secret) ;;
        argon2id) gen=(--scenario connections --connections 200 --concurrency 10
                       --username u --password secret) ;;
        tls|tls-nodelay) gen=(transport --transport tls --measure connect --cafile "$WORK/ca.pem"
                  --connections 2000 --concurrency 10) ;;
    esac
    if [ "$mode" = tls ] || [ "$mode" = tls-nodelay ]; then
        taskset -c 1 "$BIN/starling-bench" "${gen[@]}" --addr "127.0.0.1:$PORT" \
            > "$WORK/gen.json" 2>"$WORK/gen.err" &
    else
        taskset -c 1 "$BIN/starling-bench" "${gen[@]}" --port "$PORT" \
            > "$WORK/gen.json" 2>"$WORK/gen.err" &
    fi
    gpid=$!
    while kill -0 "$gpid" 2>/dev/null; do
        local now; now=$(cpu_ns "$gpid"); [ -n "$now" ] && [ "$now" -gt 0 ] && g=$now
        sleep 0.02
    done
    wait "$gpid" || { log "generator failed ($broker $mode):"; cat "$WORK/gen.err" >&2; stop; return 0; }
    b1=$(cpu_ns "$pid")
    stop
    line=$(python3 - "$WORK/gen.json" "$broker" "$mode" "$round" "$b0" "$b1" "$g" <<'EOF'
import json, sys
path, broker, mode, rnd, b0, b1, g = sys.argv[1:]
raw = open(path).read().strip().splitlines()
r = json.loads(raw[-1])
n = r.get("connected", r.get("connections"))
rate = r.get("connect_rate_per_s", r.get("conn_per_s"))
out = {
    "bench": "connect", "broker": broker, "mode": mode, "round": int(rnd),
    "connections": n, "conn_per_s": rate,
    "broker_cpu_us_per_conn": round((int(b1) - int(b0)) / 1e3 / max(n, 1), 1),
    "generator_cpu_s": round(int(g) / 1e9, 3),
    "failed": r.get("failed", 0),
}
if "connect_s" in r:
    out["connect_s"] = r["connect_s"]
if "connect_p99_us" in r:
    out["connect_p50_us"], out["connect_p99_us"] = r["connect_p50_us"], r["connect_p99_us"]
print(json.dumps(out))
EOF
    )
    echo "$line" | tee -a "$OUT"
}

for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="starling mosquitto"; else order="mosquitto starling"; fi
    for mode in plain password tls; do
        for b in $order; do log "round $round: $b $mode"; measure "$b" "$mode" "$round"; done
    done
    # mosquitto leaves Nagle's algorithm on unless told (`set_tcp_nodelay`); over TLS that
    # costs it a delayed acknowledgement (40 ms) per handshake: measured both ways.
    log "round $round: mosquitto tls-nodelay"; measure mosquitto tls-nodelay "$round"
    log "round $round: starling argon2id"; measure starling argon2id "$round"
done
log "results: $OUT"
