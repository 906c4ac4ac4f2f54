"""``gateway-sim demo`` as a person runs it: it ends on --duration, SIGTERM or when killed outright, and
leaves no process behind (gatewayd, the broker, the virtual BlueZ and its dbus-daemon), and its last lines
say what the cloud received."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO, wait_for


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the demo's work directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if text in cmd and state != "Z":
            found.append(f"{pid}: {cmd}")
    return found


@contextlib.contextmanager
def demo(workdir: Path, *args: str, own_group: bool = False) -> Iterator[subprocess.Popen[str]]:
    """The demo running; killed at the end of the block if it is still running (a failed test)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "demo", "--workdir", str(workdir), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=own_group,  # as a terminal's foreground job: Ctrl-C goes to its process group
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 60.0) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if re.search(pattern, line):
            return lines
        assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s: {''.join(lines[-20:])}"
    raise AssertionError(f"the demo ended before {pattern!r}: {''.join(lines[-30:])}")


def no_orphans(workdir: Path, timeout: float = 10.0) -> None:
    wait_for(lambda: not processes_mentioning(str(workdir)), timeout, what=f"no process of {workdir} left")


def test_demo_runs_its_duration_then_stops_everything_and_sums_up(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with demo(workdir, "--duration", "30", "--press-every", "3", "--outage-at", "5", "--outage-for", "12") as proc:
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    no_orphans(workdir)
    summary = [line for line in out.splitlines() if line.startswith("demo: ")][-5:]
    assert re.match(r"demo: the cloud received .*\d+ alert", summary[0]), summary
    assert re.match(r"demo: seq 1\.\.\d+, no gap$", summary[1]), summary
    counts = re.match(r"demo: (\d+) SOS presses made, (\d+) SOS alerts received, (\d+) SMS sent", summary[2])
    assert counts is not None, summary
    made, received, sms = map(int, counts.groups())
    assert made >= 3 and 1 <= received <= made, summary
    assert sms >= 1, f"a press during the broker outage also went out by SMS: {out[-4000:]}"
    assert "demo: modem -> SMS to" in out
    assert summary[3] == "demo: 1 call presses made, 1 call requests received", summary
    assert re.search(r"cloud <- .*ALERT call \[medium\]", out), "the call key's request reached the cloud"
    assert summary[4] == "demo: 1 daily summary printed, 1 received by the cloud", summary
    assert "demo: | Daily summary for grandma" in out and "call pressed 1" in out


def test_demo_stopped_by_sigterm_or_killed_leaves_no_process_behind(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with demo(workdir, "--press-every", "2", "--outage-at", "0") as proc:
        read_until(proc, r"cloud <- .*ALERT sos")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert "demo: gatewayd stopped" in out and "SOS presses made" in out
    no_orphans(workdir)

    killed = tmp_path / "demo-killed"
    with demo(killed, "--press-every", "2", "--outage-at", "0") as proc:
        read_until(proc, r"cloud <- .*ALERT sos")
        assert processes_mentioning(str(killed)), "the demo's processes are running"
        proc.kill()  # no chance to clean up: the kernel tells its children (PR_SET_PDEATHSIG)
        proc.wait()
    no_orphans(killed, timeout=15.0)


def test_ctrl_c_stops_gatewayd_once_and_still_shows_the_daily_summary(tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group. The demo's processes
    are not in it: gatewayd is stopped once, by the demo, in order, and exits cleanly."""
    workdir = tmp_path / "demo"
    with demo(workdir, "--press-every", "2", "--outage-at", "0", own_group=True) as proc:
        read_until(proc, r"cloud <- .*ALERT sos")
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert "demo: gatewayd stopped (exit status 0)" in out and "second stop request" not in out
    assert "demo: 1 daily summary printed, 1 received by the cloud" in out, out[-2000:]
    no_orphans(workdir)
