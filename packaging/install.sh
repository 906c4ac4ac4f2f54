#!/bin/sh
# Install (or update, or remove) the homecare gateway on Raspberry Pi OS / Debian, the way a Debian
# package would: a system user, groups, directories with the right modes, the program in a virtualenv
# under /opt, the systemd unit installed and enabled, and a configuration whose secrets only the
# service can read. Safe to run again: an update keeps the configuration and the data.
#
#   sudo packaging/install.sh                 install or update from this source tree
#   sudo packaging/install.sh --start         ... and (re)start gatewayd
#   packaging/install.sh --dry-run            print every step, change nothing
#   packaging/install.sh --destdir /tmp/root  lay the files out under a fake root (packaging, tests):
#                                             users, groups, ownership and systemctl are printed, not run
#   sudo packaging/install.sh --uninstall     remove the program and the unit; keep config and data
#   sudo packaging/install.sh --uninstall --purge   ... and the config, the data, the user and groups
#
# Layout (see docs/install.md):
#   user homecare-gateway (system, no login)  runs gatewayd; groups: homecare, homecare-gateway,
#                                             dialout (serial devices), bluetooth (BlueZ over D-Bus)
#   group homecare                            technicians: gatewayctl, the control socket, reading the
#                                             configuration and the data directory
#   group homecare-gateway                    the service alone: secrets (*.key, *password*, *secret*, *pin*)
#   /etc/homecare-gateway            0750 root:homecare
#     gateway.toml, *.pem            0640 root:homecare
#     *.key, *password*, *pin*...    0640 root:homecare-gateway   (readable by the service only)
#   /var/lib/homecare-gateway        0750 homecare-gateway:homecare  (outbox, registry, control.sock)
#   /opt/homecare-gateway/venv       the program (root-owned, read-only to the service)
#   /etc/systemd/system/gatewayd.service, /usr/local/bin/gatewayctl -> the venv's
set -eu

SERVICE_USER=homecare-gateway
SERVICE_GROUP=homecare-gateway
TECH_GROUP=homecare
EXTRA_GROUPS="dialout bluetooth"
PREFIX=/opt/homecare-gateway
ETC_DIR=/etc/homecare-gateway
STATE_DIR=/var/lib/homecare-gateway
UNIT_DIR=/etc/systemd/system
BIN_DIR=/usr/local/bin
DOC_DIR=/usr/share/doc/homecare-gateway
UNIT=gatewayd.service

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
DRY_RUN=0
ACTION=install
PURGE=0
START=0
BUILD_VENV=auto
SYSTEM_STEPS=1
PYTHON=${PYTHON:-python3}
PIP_SOURCE=""

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "options: --dry-run --destdir DIR --prefix DIR --source DIR|WHEEL --python PYTHON"
    echo "         --build-venv | --no-venv --start --uninstall [--purge] --help"
    echo "         --unit-dir DIR --bin-dir DIR --no-system (files only: for packaging/build-deb.sh)"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run|-n) DRY_RUN=1 ;;
        --destdir) DESTDIR=$2; shift ;;
        --destdir=*) DESTDIR=${1#*=} ;;
        --prefix) PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#*=} ;;
        --source) PIP_SOURCE=$2; shift ;;
        --source=*) PIP_SOURCE=${1#*=} ;;
        --python) PYTHON=$2; shift ;;
        --unit-dir) UNIT_DIR=$2; shift ;;
        --bin-dir) BIN_DIR=$2; shift ;;
        --no-system) SYSTEM_STEPS=0 ;;
        --build-venv) BUILD_VENV=1 ;;
        --no-venv) BUILD_VENV=0 ;;
        --start) START=1 ;;
        --uninstall) ACTION=uninstall ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$PIP_SOURCE" ] || PIP_SOURCE=$SRC
VENV=$PREFIX/venv
# A fake root is for building and testing: the system itself (users, ownership, services) is not touched.
if [ -n "$DESTDIR" ]; then
    DESTDIR=$(mkdir -p "$DESTDIR" && cd "$DESTDIR" && pwd)
    SYSTEM=plan
else
    SYSTEM=run
fi
[ "$DRY_RUN" = 1 ] && SYSTEM=plan
if [ "$BUILD_VENV" = auto ]; then
    if [ -n "$DESTDIR" ] || [ "$DRY_RUN" = 1 ]; then BUILD_VENV=0; else BUILD_VENV=1; fi
fi
if [ "$SYSTEM_STEPS" = 0 ] && [ -z "$DESTDIR" ]; then
    echo "install.sh: --no-system lays out files for a package: it needs --destdir" >&2
    exit 2
fi
if [ "$SYSTEM" = run ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), or use --dry-run / --destdir" >&2
    exit 1
fi

# -- the steps: everything that changes the machine goes through these ---------------------------

say() { echo "install.sh: $*"; }

# A change to the system itself (users, groups, ownership, services): printed in plan mode.
system() {
    if [ "$SYSTEM" = plan ]; then
        echo "plan: $*"
    else
        echo "+ $*"
        "$@"
    fi
}

# A change to files under the (fake) root: printed with --dry-run, done otherwise.
files() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "plan: $*"
    else
        "$@"
    fi
}

ensure_group() {
    if [ "$SYSTEM" = plan ]; then
        echo "plan: groupadd --system $1  (unless group $1 exists)"
    elif ! getent group "$1" >/dev/null; then
        system groupadd --system "$1"
    fi
}

ensure_user() {
    if [ "$SYSTEM" = plan ]; then
        echo "plan: useradd --system --gid $SERVICE_GROUP --home-dir $STATE_DIR --no-create-home --shell /usr/sbin/nologin $SERVICE_USER  (unless user $SERVICE_USER exists)"
    elif ! getent passwd "$SERVICE_USER" >/dev/null; then
        system useradd --system --gid "$SERVICE_GROUP" --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "homecare edge gateway" "$SERVICE_USER"
    fi
}

# directory MODE OWNER:GROUP PATH
directory() {
    files install -d -m "$1" "$DESTDIR$3"
    files chmod "$1" "$DESTDIR$3"
    system chown "$2" "$DESTDIR$3"
}

# put_file MODE OWNER:GROUP SOURCE DEST
put_file() {
    files install -m "$1" "$3" "$DESTDIR$4"
    system chown "$2" "$DESTDIR$4"
}

# fix_mode MODE OWNER:GROUP PATH: an existing file of the operator's, modes set again on each run
fix_mode() {
    files chmod "$1" "$DESTDIR$3"
    system chown "$2" "$DESTDIR$3"
}

# -- install ----------------------------------------------------------------------------------------

install_packages() {
    # Debian packages the gateway needs: Python's venv, BlueZ (bluetoothd) and D-Bus
    missing=""
    for pkg in python3 python3-venv bluez dbus; do
        if [ "$SYSTEM" = plan ] || ! dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
            missing="$missing $pkg"
        fi
    done
    if [ -n "$missing" ]; then
        say "system packages"
        if [ "$SYSTEM" = plan ]; then
            echo "plan: apt-get install -y$missing  (those not installed yet)"
        else
            system apt-get install -y --no-install-recommends $missing
        fi
    fi
}

install_users() {
    say "users and groups"
    ensure_group "$TECH_GROUP"
    ensure_group "$SERVICE_GROUP"
    ensure_user
    for g in $EXTRA_GROUPS; do
        ensure_group "$g"
    done
    system usermod --append --groups "$TECH_GROUP,$(echo "$EXTRA_GROUPS" | tr ' ' ',')" "$SERVICE_USER"
}

install_program() {
    say "program in $VENV"
    directory 0755 root:root "$PREFIX"
    if [ "$BUILD_VENV" = 1 ]; then
        files "$PYTHON" -m venv "$DESTDIR$VENV"
        files "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade pip
        files "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade "$PIP_SOURCE"
        if [ -n "$DESTDIR" ] && [ "$DRY_RUN" = 0 ]; then
            # built under a fake root for packaging: scripts must name the final path
            grep -rlI "$DESTDIR$VENV" "$DESTDIR$VENV/bin" | while read -r f; do
                sed -i "s|$DESTDIR$VENV|$VENV|g" "$f"
            done
        fi
    else
        echo "plan: $PYTHON -m venv $VENV && $VENV/bin/python -m pip install --upgrade $PIP_SOURCE"
    fi
    directory 0755 root:root "$BIN_DIR"
    files ln -sfn "$VENV/bin/gatewayctl" "$DESTDIR$BIN_DIR/gatewayctl"
    directory 0755 root:root "$DOC_DIR"
    for doc in README.md docs/install.md docs/technician.md docs/troubleshooting.md docs/mqtt-contract.md; do
        if [ -f "$SRC/$doc" ]; then
            put_file 0644 root:root "$SRC/$doc" "$DOC_DIR/$(basename "$doc")"
        fi
    done
    put_file 0644 root:root "$SRC/config/gateway.example.toml" "$DOC_DIR/gateway.example.toml"
}

install_config() {
    say "configuration in $ETC_DIR"
    directory 0750 "root:$TECH_GROUP" "$ETC_DIR"
    if [ -e "$DESTDIR$ETC_DIR/gateway.toml" ]; then
        say "keeping the existing $ETC_DIR/gateway.toml"
        fix_mode 0640 "root:$TECH_GROUP" "$ETC_DIR/gateway.toml"
    else
        put_file 0640 "root:$TECH_GROUP" "$SRC/config/gateway.example.toml" "$ETC_DIR/gateway.toml"
        say "edit $ETC_DIR/gateway.toml (gateway.id, uplink.host, certificates) before starting"
    fi
    # Certificates are not secret; keys, passwords and the SIM PIN are the service's alone.
    for f in "$DESTDIR$ETC_DIR"/*; do
        [ -f "$f" ] || continue
        name=${f#"$DESTDIR"}
        case "$(basename "$f")" in
            gateway.toml) ;;
            *.key|*password*|*secret*|*pin*) fix_mode 0640 "root:$SERVICE_GROUP" "$name" ;;
            *) fix_mode 0640 "root:$TECH_GROUP" "$name" ;;
        esac
    done
}

install_state() {
    say "data directory $STATE_DIR"
    directory 0750 "$SERVICE_USER:$TECH_GROUP" "$STATE_DIR"
}

install_unit() {
    say "systemd unit $UNIT_DIR/$UNIT"
    directory 0755 root:root "$UNIT_DIR"
    unit_src=$SRC/systemd/$UNIT
    if [ "$PREFIX" != /opt/homecare-gateway ]; then
        unit_src=$(mktemp)
        sed "s|/opt/homecare-gateway|$PREFIX|g" "$SRC/systemd/$UNIT" >"$unit_src"
    fi
    put_file 0644 root:root "$unit_src" "$UNIT_DIR/$UNIT"
    [ "$unit_src" = "$SRC/systemd/$UNIT" ] || rm -f "$unit_src"
    system systemctl daemon-reload
    system systemctl enable "$UNIT"
    if [ "$START" = 1 ]; then
        system systemctl restart "$UNIT"
    elif [ "$SYSTEM" = run ] && systemctl is-active --quiet "$UNIT"; then
        # an update: the running daemon gets the new program
        system systemctl restart "$UNIT"
    else
        say "start it with: sudo systemctl start gatewayd   (then: gatewayctl doctor)"
    fi
}

# -- uninstall ----------------------------------------------------------------------------------------

remove() {
    # remove PATH...: under the (fake) root
    for p in "$@"; do
        files rm -rf "$DESTDIR$p"
    done
}

uninstall() {
    say "removing the program and the unit"
    system systemctl disable --now "$UNIT"
    remove "$UNIT_DIR/$UNIT" "$BIN_DIR/gatewayctl" "$PREFIX" "$DOC_DIR"
    system systemctl daemon-reload
    if [ "$PURGE" = 1 ]; then
        say "purging configuration, data, user and groups"
        remove "$ETC_DIR" "$STATE_DIR"
        if [ "$SYSTEM" = plan ]; then
            echo "plan: userdel $SERVICE_USER; groupdel $SERVICE_GROUP; groupdel $TECH_GROUP"
        else
            ! getent passwd "$SERVICE_USER" >/dev/null || system userdel "$SERVICE_USER"
            ! getent group "$SERVICE_GROUP" >/dev/null || system groupdel "$SERVICE_GROUP"
            ! getent group "$TECH_GROUP" >/dev/null || system groupdel "$TECH_GROUP"
        fi
    else
        say "kept $ETC_DIR and $STATE_DIR (the outbox may hold undelivered readings); --purge removes them"
    fi
}

if [ "$ACTION" = uninstall ]; then
    uninstall
elif [ "$SYSTEM_STEPS" = 0 ]; then
    # files only, for a package build: the package's maintainer scripts do the system steps
    install_program
    install_config
    install_state
    say "system steps left to the package's postinst"
    directory 0755 root:root "$UNIT_DIR"
    put_file 0644 root:root "$SRC/systemd/$UNIT" "$UNIT_DIR/$UNIT"
else
    install_packages
    install_users
    install_program
    install_config
    install_state
    install_unit
    say "done. Technicians: sudo usermod -aG $TECH_GROUP <login> to use gatewayctl without sudo"
fi
