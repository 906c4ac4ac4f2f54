"""The TinyDB device registry: atomic writes that survive a kill mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.registry import Registry
from tests.helpers import REPO


def test_devices_are_remembered_with_state_changes_only(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    with Registry(path) as reg:
        reg.note_device("rfx", "rfxtrx-sos", state="connected", at=10.0)
        mtime = path.stat().st_mtime_ns
        reg.note_device("rfx", "unknown", state="connected", at=11.0)  # no change: no write
        assert path.stat().st_mtime_ns == mtime
        reg.note_device("rfx", "unknown", state="disconnected", at=12.0)
        reg.set("drill_until", 123.5)
    with Registry(path) as reg:
        dev = reg.device("rfx")
        assert dev is not None
        assert (dev["kind"], dev["state"], dev["state_at"], dev["first_seen"]) == (
            "rfxtrx-sos",
            "disconnected",
            12.0,
            10.0,
        )
        assert reg.get("drill_until") == 123.5
        assert reg.get("missing", "dflt") == "dflt"


WRITER = """
import sys
from gateway.registry import Registry
reg = Registry(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    i += 1
    reg.note_device(f"dev-{i % 50}", "kind", state=f"s{i}", at=float(i))
"""


def test_a_kill_during_writes_never_leaves_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + 0.05 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        data = json.loads(path.read_text())  # must parse: old or new version, never a mix
        assert len(data["devices"]) >= 1
        with Registry(path) as reg:
            assert len(reg.all_devices()) <= 50
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 5, "at most one temp file per kill"
