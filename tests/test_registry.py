"""The TinyDB device registry: atomic writes that survive a kill mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_reads_come_from_memory_and_a_failed_write_goes_back_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    with Registry(path) as reg:
        reg.note_device("a", "kind-a", state="connected", at=1.0)
        path.write_text(json.dumps({"devices": {}}))  # nobody else writes it: memory still knows "a"
        assert reg.device("a") is not None
        reg.note_device("b", "kind-b", at=2.0)
        assert {d["id"] for d in json.loads(path.read_text())["devices"].values()} == {"a", "b"}
        # a write that cannot happen (the directory is gone): memory must not stay ahead of the file
        gone = tmp_path / "gone"
        gone.mkdir()
        other = Registry(gone / "registry.json")
        other.note_device("x", "k", at=1.0)
        (gone / "registry.json").unlink()
        gone.rmdir()
        with pytest.raises(OSError):
            other.note_device("y", "k", at=2.0)
        gone.mkdir()
        assert other.device("y") is None and other.device("x") is None, "the next read is the file's (none)"
        other.close()
    with Registry(path) as again:
        assert {d["id"] for d in again.all_devices()} == {"a", "b"}
