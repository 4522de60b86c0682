#!/usr/bin/env bash
# Installs what the test suites need on a Debian machine (run as root).
# Idempotent: anything already present is left alone.
#   - mosquitto-clients (mosquitto_pub / mosquitto_sub) for the interop tests
#   - mosquitto, used only as a reference broker to validate the interop suite
#   - chromium and chromium-driver, for the dashboard's browser test (Selenium)
#   - haproxy, in front of the broker in the PROXY protocol tests (test_proxy_protocol.py)
#   - a virtualenv at .venv with the packages of tests/interop/requirements.txt
#     (paho-mqtt, pytest, prometheus-client, selenium, and PyJWT with cryptography for
#     the JWT tests)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
REQS="$ROOT/tests/interop/requirements.txt"
PYTHON="${PYTHON:-python3}"

export DEBIAN_FRONTEND=noninteractive

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

# Runs a command as root, via sudo when we are not root already.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n env DEBIAN_FRONTEND=noninteractive "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

apt_updated=0
apt_install() {
    local missing=()
    local p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -q </dev/null
        apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

# --- Debian packages --------------------------------------------------------
apt_install mosquitto-clients mosquitto openssl chromium chromium-driver haproxy

# The tests start their own mosquitto and haproxy instances on free ports, with their own
# config files; the packaged system services (if any) are never used.

# --- Python virtualenv ------------------------------------------------------
venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

if ! venv_ok; then
    log "creating virtualenv $VENV"
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi

# Installed only when something in requirements.txt is missing or out of range.
reqs_satisfied() {
    "$VENV/bin/python" - "$REQS" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        v = version(req.name)
    except PackageNotFoundError:
        sys.exit(1)
    if req.specifier and not req.specifier.contains(v, prereleases=True):
        sys.exit(1)
PY
}

if ! reqs_satisfied; then
    log "pip install -r $REQS"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q \
        --no-input -r "$REQS" </dev/null
fi

log "ok: $(mosquitto_pub --help 2>/dev/null | sed -n 2p || true)"
log "ok: $("$VENV/bin/python" -c 'import paho.mqtt, pytest; print("paho-mqtt", paho.mqtt.__version__, "pytest", pytest.__version__)')"
log "ok: $("$VENV/bin/python" -c 'import jwt, cryptography; print("PyJWT", jwt.__version__, "cryptography", cryptography.__version__)')"
