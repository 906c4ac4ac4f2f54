#!/usr/bin/env bash
# The two commands of the README's quick start, on a fresh Debian / Raspberry Pi OS machine:
#   ./dev.sh demo   run the gateway's main job: local broker, simulators, gatewayd, cloud viewer
#   ./dev.sh test   run the whole test suite
# Both bootstrap the same way: system packages when missing (apt-get, via sudo when not root), then a
# virtualenv in .venv with the project and its development extras.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "dev.sh: $* missing and this is not a Debian-like system: install them by hand" >&2
        exit 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

bootstrap() {
    local need=()
    have_mosquitto || need+=(mosquitto)
    command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
    # libfaketime: the clock tests run the real gatewayd on a wall clock they move (tests/test_clock_faketime.py)
    command -v faketime >/dev/null 2>&1 || need+=(faketime)
    compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || need+=(libfaketime)
    PY="${PYTHON:-python3}"
    if ! command -v "$PY" >/dev/null 2>&1; then
        need+=(python3 python3-venv)
    elif ! "$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            echo "dev.sh: Python >= 3.11 is needed ($("$PY" --version))" >&2; exit 1; }
        need+=(python3-venv)
    fi
    if [ "${#need[@]}" -gt 0 ]; then
        echo "dev.sh: installing system packages: ${need[*]}"
        apt_install "${need[@]}"
    fi
    # Mosquitto's Debian package starts a system broker on 1883; we never use it (tests and the demo
    # start their own on free ports), so it may run or not.
    if [ ! -x .venv/bin/python ]; then
        "$PY" -m venv .venv
    fi
    local stamp=.venv/.installed
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e '.[dev]'
        touch "$stamp"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        bootstrap
        exec .venv/bin/gateway-sim demo "$@"
        ;;
    test)
        bootstrap
        set +e
        # Two workers (pytest-xdist), work-stealing: the tests mostly wait on real parts, so two at a
        # time halve the wall time. `./dev.sh test -n 0` runs them one by one.
        .venv/bin/python -m pytest -n 2 --dist worksteal "$@"
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            echo "dev.sh: pytest collected no tests: that is a failure, not a pass" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    check)
        bootstrap
        .venv/bin/ruff check gateway drivers simulators tests bench
        .venv/bin/mypy
        ;;
    bootstrap)
        bootstrap
        ;;
    *)
        echo "usage: ./dev.sh demo|test|check|bootstrap [args...]" >&2
        exit 2
        ;;
esac
