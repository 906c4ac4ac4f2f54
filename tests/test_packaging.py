"""The install path and the service unit: ``packaging/install.sh`` laid out in a fake root (its
system-changing steps printed as a plan, not run), and the unit's ``systemd-analyze security`` score."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from gateway import doctor
from gateway.config import load_config
from tests.helpers import REPO

INSTALL = REPO / "packaging" / "install.sh"
UNIT = REPO / "systemd" / "gatewayd.service"


def install(root: Path, *args: str) -> tuple[str, str]:
    out = subprocess.run(
        ["sh", str(INSTALL), "--destdir", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DESTDIR"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def plan(stdout: str) -> list[str]:
    return [line.removeprefix("plan: ") for line in stdout.splitlines() if line.startswith("plan: ")]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def unit_service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_install_lays_out_a_fake_root_and_plans_the_system_steps(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out, _ = install(root)
    steps = plan(out)
    etc, state = root / "etc/homecare-gateway", root / "var/lib/homecare-gateway"

    # directories and files with their modes
    assert mode(etc) == 0o750 and mode(etc / "gateway.toml") == 0o640
    assert mode(state) == 0o750
    unit = root / "etc/systemd/system/gatewayd.service"
    assert mode(unit) == 0o644 and unit.read_text() == UNIT.read_text()
    link = root / "usr/local/bin/gatewayctl"
    assert os.readlink(link) == "/opt/homecare-gateway/venv/bin/gatewayctl"
    assert (root / "usr/share/doc/homecare-gateway/gateway.example.toml").is_file()
    # the configuration installed is the documented example, and it is valid
    assert (etc / "gateway.toml").read_text() == (REPO / "config/gateway.example.toml").read_text()
    assert load_config(etc / "gateway.toml").gateway.data_dir == Path("/var/lib/homecare-gateway")

    # the system steps, in order: groups and the user before ownership, the unit enabled last
    assert "groupadd --system homecare  (unless group homecare exists)" in steps
    useradd = next(s for s in steps if s.startswith("useradd"))
    assert (
        "--system" in useradd
        and "--gid homecare-gateway" in useradd
        and "/usr/sbin/nologin homecare-gateway" in useradd
    )
    assert "usermod --append --groups homecare,dialout,bluetooth homecare-gateway" in steps
    assert f"chown root:homecare {etc}" in steps
    assert f"chown root:homecare {etc / 'gateway.toml'}" in steps
    assert f"chown homecare-gateway:homecare {state}" in steps
    assert steps.index("systemctl daemon-reload") < steps.index("systemctl enable gatewayd.service")
    assert steps.index(useradd) < steps.index(f"chown homecare-gateway:homecare {state}")
    assert any(s.startswith("python3 -m venv /opt/homecare-gateway/venv") for s in steps)
    # nothing ran on the real system
    assert not any(line.startswith("+ ") for line in out.splitlines())


def test_install_again_keeps_the_configuration_and_locks_down_secrets(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    etc = root / "etc/homecare-gateway"
    (etc / "gateway.toml").write_text((etc / "gateway.toml").read_text().replace("gw-0001", "gw-home-42"))
    for name, m in (("client.key", 0o644), ("mqtt-password", 0o644), ("sim-pin", 0o644), ("ca.pem", 0o600)):
        (etc / name).write_text("x\n")
        (etc / name).chmod(m)
    out, _ = install(root)
    steps = plan(out)
    assert 'id = "gw-home-42"' in (etc / "gateway.toml").read_text(), "an update keeps the operator's config"
    assert "keeping the existing /etc/homecare-gateway/gateway.toml" in out
    for secret in ("client.key", "mqtt-password", "sim-pin"):
        assert mode(etc / secret) == 0o640
        assert f"chown root:homecare-gateway {etc / secret}" in steps, "secrets: the service's group only"
    assert mode(etc / "ca.pem") == 0o640 and f"chown root:homecare {etc / 'ca.pem'}" in steps


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out, _ = install(root, "--dry-run")
    assert list(root.iterdir()) == []
    steps = plan(out)
    assert f"install -d -m 0750 {root}/etc/homecare-gateway" in steps
    assert any(s.startswith(f"install -m 0644 {UNIT} {root}/etc/systemd/system/gatewayd.service") for s in steps)
    assert "systemctl enable gatewayd.service" in steps


def test_another_prefix_is_written_into_the_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--prefix", "/srv/hc")
    unit = (root / "etc/systemd/system/gatewayd.service").read_text()
    assert "ExecStart=/srv/hc/venv/bin/gatewayd --config /etc/homecare-gateway/gateway.toml" in unit
    assert "/opt/homecare-gateway" not in unit
    assert os.readlink(root / "usr/local/bin/gatewayctl") == "/srv/hc/venv/bin/gatewayctl"


def test_uninstall_keeps_config_and_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    (root / "var/lib/homecare-gateway/outbox.sqlite3").write_bytes(b"undelivered")
    out, _ = install(root, "--uninstall")
    assert "systemctl disable --now gatewayd.service" in plan(out)
    assert not (root / "etc/systemd/system/gatewayd.service").exists()
    assert not (root / "opt/homecare-gateway").exists() and not (root / "usr/local/bin/gatewayctl").is_symlink()
    assert (root / "etc/homecare-gateway/gateway.toml").exists()
    assert (root / "var/lib/homecare-gateway/outbox.sqlite3").read_bytes() == b"undelivered"
    out, _ = install(root, "--uninstall", "--purge")
    assert not (root / "etc/homecare-gateway").exists() and not (root / "var/lib/homecare-gateway").exists()
    assert "userdel homecare-gateway; groupdel homecare-gateway; groupdel homecare" in plan(out)


def test_unit_install_script_and_doctor_agree_on_users_and_paths() -> None:
    svc = unit_service()
    script = INSTALL.read_text()
    user = re.search(r"^SERVICE_USER=(\S+)$", script, re.M)
    tech = re.search(r"^TECH_GROUP=(\S+)$", script, re.M)
    assert user and tech
    assert svc["User"] == user.group(1) == doctor.SERVICE_USER
    assert svc["Group"] == tech.group(1) == doctor.CONTROL_GROUP
    assert set(svc["SupplementaryGroups"].split()) == {"homecare-gateway", "dialout", "bluetooth"}
    assert svc["Type"] == "notify" and svc["WatchdogSec"]
    assert svc["ReadWritePaths"] == "/var/lib/homecare-gateway" and svc["ProtectSystem"] == "strict"


def test_systemd_security_exposure_is_at_most_2() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    out = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out.stdout)
    if found is None and "--offline" in out.stderr:
        pytest.skip(f"this systemd-analyze has no --offline mode: {out.stderr.strip()}")
    assert found, out.stdout + out.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.0, out.stdout


def test_debian_package_layout_and_maintainer_scripts(tmp_path: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    out = subprocess.run(
        ["sh", str(REPO / "packaging" / "build-deb.sh"), "--out", str(tmp_path), "--no-venv"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    deb = Path(out.stdout.strip().splitlines()[-1])
    assert deb.is_file() and deb.name.startswith("homecare-gateway_")
    tree = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=60)
    control = (tree / "DEBIAN" / "control").read_text()
    assert "Package: homecare-gateway" in control and "bluez" in control
    assert (tree / "DEBIAN" / "conffiles").read_text().split() == ["/etc/homecare-gateway/gateway.toml"]
    assert (tree / "lib/systemd/system/gatewayd.service").read_text() == UNIT.read_text()
    assert os.readlink(tree / "usr/bin/gatewayctl") == "/opt/homecare-gateway/venv/bin/gatewayctl"
    assert mode(tree / "etc/homecare-gateway") == 0o750 and mode(tree / "etc/homecare-gateway/gateway.toml") == 0o640
    postinst = (tree / "DEBIAN" / "postinst").read_text()
    # the same users, groups and ownership as install.sh and the unit
    svc = unit_service()
    assert "--ingroup homecare-gateway --home /var/lib/homecare-gateway" in postinst
    assert "adduser --system" in postinst and svc["User"] in postinst
    assert "usermod --append --groups homecare,dialout,bluetooth homecare-gateway" in postinst
    assert "chown homecare-gateway:homecare /var/lib/homecare-gateway" in postinst
    assert "*.key|*password*|*secret*|*pin*) chown root:homecare-gateway" in postinst
    assert "systemctl enable gatewayd.service" in postinst
    for script in ("postinst", "prerm", "postrm"):
        assert mode(tree / "DEBIAN" / script) == 0o755
        assert subprocess.run(["sh", "-n", str(tree / "DEBIAN" / script)], timeout=30).returncode == 0
    assert "rm -rf /var/lib/homecare-gateway /etc/homecare-gateway" in (tree / "DEBIAN" / "postrm").read_text()
