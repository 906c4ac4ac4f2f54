from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import Mosquitto
from tests.helpers import Collector, contract_cloud


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port; tests may stop, kill and restart it."""
    b = Mosquitto(workdir=tmp_path / "broker", persistence=True)
    b.workdir.mkdir(parents=True, exist_ok=True)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def cloud(broker: Mosquitto) -> Iterator[Collector]:
    """The cloud side: a QoS 1 subscriber to homecare/v1/# that checks every message against the
    contract's JSON Schemas. Tests that restart the broker reconnect it with ``reconnect()``."""
    with contract_cloud(broker.port) as collector:
        yield collector
