"""The care state in care.sqlite3 (issue 15): saved by what changed, kept across an orderly restart and a
SIGKILL, migrated from the registry's old whole-state setting, reminders scheduled rather than scanned.

The end-to-end test runs a real gatewayd with the RFXtrx receiver on a pty; presses are radio frames.
The broker is left unreachable: the care state must not depend on the cloud.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gateway.care import SNAPSHOT_KEY, STORE_NAME, CareDesk
from gateway.config import RulesSection
from gateway.ctl import call
from gateway.messages import Topics
from gateway.outbox import NewMessage
from gateway.registry import Registry
from gateway.rules import RuleEngine, WatchSettings
from simulators.broker import free_port
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import GatewayProcess, gateway_config, rfxtrx_device, status_via_ctl, until

T0 = 1_750_000_000.0


def _unused_submit(_msg: NewMessage) -> asyncio.Future[int]:
    raise AssertionError("no care alert expected")


def desk(data: Path, clock: list[float]) -> CareDesk:
    return CareDesk(
        RulesSection(),
        Topics("homecare/v1", "gw"),
        _unused_submit,
        Registry(data / "registry.json"),
        clock=lambda: clock[0],
    )


def open_ids(d: CareDesk) -> set[str]:
    return {a.alert_id for a in d.engine.open_alerts()}


def rows(data: Path) -> set[str]:
    db = sqlite3.connect(data / STORE_NAME)
    try:
        return {aid for (aid,) in db.execute("SELECT id FROM alert")}
    finally:
        db.close()


def test_presses_and_acks_are_written_row_by_row_and_restored(tmp_path: Path) -> None:
    clock = [T0]
    d = desk(tmp_path, clock)
    for i in range(5):
        d.sos(f"sos-p{i}-1", f"p{i}", T0 + i)  # no loop running: written at once
    assert rows(tmp_path) == {f"sos-p{i}-1" for i in range(5)}
    assert d.ack("sos-p2-1", T0 + 10)
    assert rows(tmp_path) == {f"sos-p{i}-1" for i in (0, 1, 3, 4)}, "an acked SOS leaves the store"
    d.store.close()  # no save(): as after a kill, only what each change wrote

    again = desk(tmp_path, clock)
    assert open_ids(again) == {f"sos-p{i}-1" for i in (0, 1, 3, 4)}
    assert again.ack("sos-p2-1", T0 + 20), "a repeated ack of an acked alert is still known after a restart"
    assert not again.ack("sos-never-1", T0 + 20)
    again.close()


def test_a_press_writes_one_row_whatever_is_open(tmp_path: Path) -> None:
    clock = [T0]
    d = desk(tmp_path, clock)
    for i in range(2000):
        d.engine.open_external(f"sos-old-{i}", "sos", "critical", "p", T0, T0)
    d._all_alerts = d._dirty = True
    d.save()
    writes: list[dict[str, Any]] = []
    real = d.store.write

    def spy(**kw: Any) -> bool:
        writes.append(kw)
        return real(**kw)

    d.store.write = spy  # type: ignore[method-assign]

    async def press() -> None:
        d.sos("sos-new-1", "p", T0 + 1)
        d.sos("sos-new-2", "p", T0 + 2)
        await asyncio.sleep(0)  # the end of the loop iteration: one transaction for both

    asyncio.run(press())
    assert len(writes) == 1 and set(writes[0]["alerts"]) == {"sos-new-1", "sos-new-2"}
    assert writes[0].get("state") is None, "a press does not rewrite the rest of the state"
    assert len(rows(tmp_path)) == 2002
    d.close()


def test_the_registry_snapshot_is_migrated_once(tmp_path: Path) -> None:
    engine = RuleEngine(WatchSettings())
    engine.open_external("sos-a-1", "sos", "critical", "a", T0, T0)
    engine.open_external("sos-b-1", "sos", "critical", "b", T0, T0)
    engine.ack("sos-b-1", T0 + 1)
    with Registry(tmp_path / "registry.json") as reg:
        reg.set(SNAPSHOT_KEY, engine.snapshot())
    clock = [T0 + 5]
    d = desk(tmp_path, clock)
    assert open_ids(d) == {"sos-a-1"}
    assert d.registry.get(SNAPSHOT_KEY) is None, "the old copy is gone once care.sqlite3 has it"
    assert rows(tmp_path) == {"sos-a-1"}
    d.close()
    d.registry.close()
    again = desk(tmp_path, clock)
    assert open_ids(again) == {"sos-a-1"} and again.ack("sos-b-1", T0 + 6)
    again.close()


def test_a_damaged_store_is_moved_aside_and_the_desk_starts(tmp_path: Path) -> None:
    (tmp_path / STORE_NAME).write_bytes(b"this is not an sqlite database" * 100)
    d = desk(tmp_path, [T0])
    d.sos("sos-x-1", "x", T0)
    assert rows(tmp_path) == {"sos-x-1"}
    assert list(tmp_path.glob(f"{STORE_NAME}.damaged-*"))
    d.close()


def test_reminders_come_due_from_the_schedule_and_stop_at_ack() -> None:
    e = RuleEngine(WatchSettings(reminder_interval_s=60))
    for i in range(300):
        e.open_external(f"sos-{i}", "sos", "critical", "p", T0 + i, T0 + i)
    for i in range(0, 300, 2):
        e.ack(f"sos-{i}", T0 + 1)  # closed: never reminded
    due = [ev.alert_id for ev in e.tick(T0 + 61.5)]
    assert due == ["sos-1"], "only what is due, in time order"
    second = {ev.alert_id for ev in e.tick(T0 + 360)}
    assert second == {f"sos-{i}" for i in range(1, 300, 2)}
    assert {ev.reminder for ev in e.tick(T0 + 420) if ev.alert_id == "sos-1"} == {3}
    # the schedule is rebuilt by a restore
    again = RuleEngine(WatchSettings(reminder_interval_s=60))
    again.restore(e.snapshot(), T0 + 420)
    assert {ev.alert_id for ev in again.tick(T0 + 480)} == {ev.alert_id for ev in e.tick(T0 + 480)}


def test_gatewayd_keeps_open_sos_alerts_across_sigkill_and_restart(tmp_path: Path) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_CARE-if00-port0"
    config = gateway_config(tmp_path, free_port(), devices=rfxtrx_device(link, accept_unknown=True))

    def open_sos() -> set[str]:
        st = status_via_ctl(config)
        return {a["alert_id"] for a in st["care"]["open_alerts"]} if st else set()

    async def go() -> None:
        async with RfxtrxSimulator(link) as sim:
            gw = GatewayProcess(config)
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver")
                for sensor in (0x100001, 0x100002, 0x100003):
                    await sim.press(sensor, repeats=2, gap_s=0.02)
                await until(lambda: len(rows(tmp_path / "data")) == 3, 20, "three alert rows")
                gw.kill()  # SIGKILL: nothing saved at stop
                before = rows(tmp_path / "data")

                gw = GatewayProcess(config)
                gw.start()
                await until(lambda: sim.started and open_sos() == before, 20, "the alerts restored after the kill")
                await asyncio.to_thread(call, _socket(config), "alert-ack", alert_id=sorted(before)[0])
                gw.terminate()

                gw = GatewayProcess(config)
                gw.start()
                await until(lambda: open_sos() == set(sorted(before)[1:]), 20, "the ack kept across a restart")
                gw.terminate()
            finally:
                gw.stop_quietly()
        assert "Traceback" not in gw.log()

    asyncio.run(go())


def _socket(config: Path) -> Path:
    from gateway.config import load_config

    return load_config(config).gateway.socket_path


def test_store_write_failure_keeps_the_changes_for_the_next_save(tmp_path: Path) -> None:
    d = desk(tmp_path, [T0])
    d.store._db.execute("DROP TABLE alert")  # a write that fails like a full or read-only disk
    d.sos("sos-y-1", "y", T0)
    assert "sos-y-1" in d._changed
    d.store._db.executescript("CREATE TABLE alert(id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;")
    d.save()
    assert rows(tmp_path) == {"sos-y-1"}
    d.close()


def test_a_reminder_is_written_to_its_row_and_counts_on_after_a_restart(tmp_path: Path) -> None:
    clock = [T0]
    d = desk(tmp_path, clock)
    d.sos("sos-r-1", "r", T0)
    clock[0] = T0 + 301  # the default reminder interval is 300 s
    d.tick()
    (a,) = d.engine.open_alerts()
    assert a.reminders == 1
    d.store.close()  # killed: only the rows
    again = desk(tmp_path, clock)
    (b,) = again.engine.open_alerts()
    assert b.reminders == 1, "the reminder's row was written when it fired"
    clock[0] = T0 + 602
    again.tick()
    assert again.engine.open_alerts()[0].reminders == 2
    again.close()
