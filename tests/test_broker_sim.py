"""The test broker (simulators/broker.py) leaves nothing behind: a broker given no directory makes its
own, and removes it when it is left (``gateway-sim broker`` left one in /tmp per run)."""

from __future__ import annotations

import socket

from simulators.broker import Mosquitto


def test_a_broker_without_a_directory_removes_the_one_it_made() -> None:
    with Mosquitto() as broker:
        made = broker.workdir
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5):
            pass  # it listens
        assert (made / "mosquitto.conf").exists()
    assert not made.exists() and broker.proc is None
