"""SOS by SMS with the broker down: press-to-SMS-handed-to-the-modem latency over N presses.

A real ``gatewayd`` process with an RFXtrx receiver (simulator on a pty, N different pendants, one
press each, ``--every`` seconds apart) and a cellular modem (the AT simulator on a pty, delivery
reports on), its uplink pointed at a loopback port where no broker listens. Each press must reach
each configured recipient (a care-centre number and a guardian) by SMS exactly once.

Latency = the moment the modem simulator has the complete PDU of the first SMS of a press (after
``AT+CMGS`` and its prompt) minus the moment the press's first radio frame left the simulated
receiver, both on this process's monotonic clock. It covers the driver, the pipeline and outbox
commit, the fallback's decision and record (SQLite, synchronous=FULL), the PDU encoding and the AT
dialogue. The simulated network takes 50 ms per SMS (``ModemState.cmgs_delay_s``); a real network
takes seconds, which this figure does not include.

    .venv/bin/python bench/sos_fallback.py [--presses 100] [--every 0.6] [--quick]

Ends with ``RESULT sms_p50_ms=... sms_p99_ms=... duplicates=... lost=...`` (duplicates: SMS beyond
one per recipient and press; lost: recipient-and-press pairs without an SMS).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import pct, result_line
from drivers.serial import at
from simulators.broker import free_port
from simulators.modem_sim import ModemSimulator, demo_alarm_section
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import GatewayProcess, gateway_config, rfxtrx_device

CC, G1 = "+10000000001", "+10000000002"  # demo_alarm_section's
BUTTON_RE = re.compile(r"button (sos-[0-9]+) ")


class StampingModem(ModemSimulator):
    """The modem simulator, noting when each PDU arrived (before the simulated network delay)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.arrivals: list[tuple[float, str, str]] = []  # (monotonic, button, recipient)

    async def _accept_pdu(self, pdu_hex: str) -> None:
        t = time.monotonic()
        try:
            d = at.decode_submit(pdu_hex)
        except at.PduError:
            d = None
        if d is not None and (d.concat is None or d.concat[2] == 1):
            m = BUTTON_RE.search(d.text)
            self.arrivals.append((t, m.group(1) if m else "?", d.number))
        await super()._accept_pdu(pdu_hex)


async def bench(n: int, every: float, workdir: Path) -> dict[str, float | int]:
    rfx_link = workdir / "dev" / "usb-RFXCOM_RFXtrx433_BENCH-if00-port0"
    modem_link = workdir / "dev" / "usb-SimTech_SIM7600-if02-port0"
    sensors = {f"{0x100000 + i:06x}": f"sos-{i}" for i in range(n)}
    config = gateway_config(workdir, free_port(), devices=rfxtrx_device(rfx_link, sensors))
    config.write_text(config.read_text() + demo_alarm_section(modem_link, sms_after_s=30))
    gw = GatewayProcess(config, log_level="WARNING")
    press_at: dict[str, float] = {}
    async with RfxtrxSimulator(rfx_link) as rfx, StampingModem(modem_link) as modem:
        gw.start()
        try:
            deadline = time.monotonic() + 30
            while not (rfx.started and "AT+CNMI=2,1,0,1,0" in modem.commands):
                if time.monotonic() > deadline:
                    raise SystemExit("gatewayd did not start the receiver and the modem")
                await asyncio.sleep(0.05)
            for i, sensor in enumerate(sensors):
                press_at[f"sos-{i}"] = time.monotonic()
                await rfx.press(int(sensor, 16), repeats=3, gap_s=0.02)
                await asyncio.sleep(every)
            deadline = time.monotonic() + 60
            while len(modem.sent) < 2 * n and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)  # anything extra (a duplicate) would arrive by now
        finally:
            gw.stop_quietly()
    first: dict[str, float] = {}
    for t, button, _to in modem.arrivals:
        first.setdefault(button, t)
    latencies = [(first[b] - press_at[b]) * 1000.0 for b in press_at if b in first]
    per_pair = Counter((BUTTON_RE.search(s.text).group(1), s.to) for s in modem.sent if BUTTON_RE.search(s.text))  # type: ignore[union-attr]
    wanted = {(b, to) for b in press_at for to in (CC, G1)}
    duplicates = sum(c - 1 for c in per_pair.values() if c > 1)
    lost = len(wanted - set(per_pair))
    print(f"{n} presses, {len(modem.sent)} SMS, {len(latencies)} presses with an SMS", flush=True)
    return {
        "sms_p50_ms": pct(latencies, 50),
        "sms_p99_ms": pct(latencies, 99),
        "duplicates": duplicates,
        "lost": lost,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=100)
    parser.add_argument("--every", type=float, default=0.6, help="seconds between presses")
    parser.add_argument("--quick", action="store_true", help="20 presses")
    args = parser.parse_args()
    n = 20 if args.quick else args.presses
    with tempfile.TemporaryDirectory(prefix="sos-fallback-") as tmp:
        figures = asyncio.run(bench(n, args.every, Path(tmp)))
    print(result_line(**figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
