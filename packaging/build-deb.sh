#!/bin/sh
# Build a Debian package of the gateway with dpkg-deb (no debhelper needed):
#
#   packaging/build-deb.sh [--out DIR] [--no-venv]
#
# The package holds what packaging/install.sh lays out (the program in a virtualenv under
# /opt/homecare-gateway, the unit in /lib/systemd/system, gatewayctl in /usr/bin, the documented example
# configuration as the conffile /etc/homecare-gateway/gateway.toml) and maintainer scripts that do the
# system steps: the homecare-gateway user, the homecare and homecare-gateway groups, ownership and
# modes, the unit enabled. `dpkg -i` then `gatewayctl doctor`; `apt remove` keeps config and data,
# `apt purge` removes them.
#
# The virtualenv is built for this machine's Python and architecture: build on the target OS release
# (Raspberry Pi OS Bookworm armhf or arm64, or in a container of it). --no-venv builds a package without
# the program (for checking the layout and the scripts only). PYTHON=... picks the interpreter
# (default /usr/bin/python3, the one the package depends on).
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$SRC/dist
VENV_OPT=--build-venv
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift ;;
        --no-venv) VENV_OPT=--no-venv ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb is needed (apt-get install dpkg)" >&2; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$SRC/pyproject.toml" | head -n 1)
ARCH=$(dpkg --print-architecture)
[ "$VENV_OPT" = --build-venv ] || ARCH=all
NAME=homecare-gateway
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# Debian's python3 (the package depends on it), not whatever python3 comes first on PATH
PYTHON=${PYTHON:-/usr/bin/python3}
sh "$SRC/packaging/install.sh" --destdir "$STAGE/root" --no-system $VENV_OPT --python "$PYTHON" \
    --unit-dir /lib/systemd/system --bin-dir /usr/bin >"$STAGE/install.log"
ROOT=$STAGE/root
mkdir -p "$ROOT/DEBIAN"

cat >"$ROOT/DEBIAN/control" <<CONTROL
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: Homecare gateway developers <homecare-gateway@example.org>
Depends: python3 (>= 3.11), bluez, dbus, adduser, systemd
Section: misc
Priority: optional
Homepage: https://github.com/homecare-gateway/homecare-gateway
Description: edge gateway for elderly care at home
 Reads wrist monitors, blood-pressure cuffs, pulse oximeters and SOS buttons over Bluetooth LE
 and USB serial, computes heart rate, SpO2 and AF screening on the device, keeps every reading on
 local disk and publishes it to the care platform's MQTT broker, SOS first.
CONTROL

echo /etc/homecare-gateway/gateway.toml >"$ROOT/DEBIAN/conffiles"

cat >"$ROOT/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    getent group homecare >/dev/null || addgroup --system homecare
    getent group homecare-gateway >/dev/null || addgroup --system homecare-gateway
    getent group dialout >/dev/null || addgroup --system dialout
    getent group bluetooth >/dev/null || addgroup --system bluetooth
    if ! getent passwd homecare-gateway >/dev/null; then
        adduser --system --ingroup homecare-gateway --home /var/lib/homecare-gateway --no-create-home \
            --shell /usr/sbin/nologin --gecos "homecare edge gateway" homecare-gateway
    fi
    usermod --append --groups homecare,dialout,bluetooth homecare-gateway
    chown root:homecare /etc/homecare-gateway /etc/homecare-gateway/gateway.toml
    chmod 0750 /etc/homecare-gateway
    chmod 0640 /etc/homecare-gateway/gateway.toml
    for f in /etc/homecare-gateway/*; do
        [ -f "$f" ] || continue
        case "$(basename "$f")" in
            gateway.toml) ;;
            *.key|*password*|*secret*|*pin*) chown root:homecare-gateway "$f"; chmod 0640 "$f" ;;
            *) chown root:homecare "$f"; chmod 0640 "$f" ;;
        esac
    done
    install -d -m 0750 -o homecare-gateway -g homecare /var/lib/homecare-gateway
    chown homecare-gateway:homecare /var/lib/homecare-gateway
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable gatewayd.service >/dev/null
        if systemctl is-active --quiet gatewayd.service; then
            systemctl restart gatewayd.service
        else
            echo "homecare-gateway: edit /etc/homecare-gateway/gateway.toml, then: systemctl start gatewayd; gatewayctl doctor"
        fi
    fi
fi
exit 0
POSTINST

cat >"$ROOT/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now gatewayd.service >/dev/null 2>&1 || true
fi
exit 0
PRERM

cat >"$ROOT/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
    # the outbox may hold undelivered readings: purge is the operator's explicit choice
    rm -rf /var/lib/homecare-gateway /etc/homecare-gateway
    ! getent passwd homecare-gateway >/dev/null || deluser --system homecare-gateway >/dev/null || true
    ! getent group homecare-gateway >/dev/null || delgroup --system homecare-gateway >/dev/null || true
    ! getent group homecare >/dev/null || delgroup --system homecare >/dev/null || true
fi
exit 0
POSTRM
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

mkdir -p "$OUT"
DEB=$OUT/${NAME}_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
