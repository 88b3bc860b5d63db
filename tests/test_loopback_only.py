"""The brokers ``edgeplane up`` starts listen on loopback only, on every listener: seen on
the process's own sockets, not in its config (mosquitto 2.0.11 binds a websockets listener
to every interface whatever address its config gives, eclipse-mosquitto/mosquitto#3045)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplane.controller.broker.choice import LOCAL_HOST, BrokerPlan, make_broker
from edgeplane.controller.broker.process import BrokerProcess, free_port
from tests.support.sockets import LOOPBACK, listening


def _sockets_of(broker: BrokerProcess) -> set[tuple[str, int]]:
    broker.start()
    try:
        assert broker.pid is not None
        return listening(broker.pid)
    finally:
        broker.stop()


def test_the_development_mosquitto_listens_on_loopback_only(tmp_path: Path) -> None:
    port, ws_port = free_port(), free_port()
    plan = BrokerPlan("mosquitto", f"mqtt://{LOCAL_HOST}:{port}")
    broker = make_broker(plan, tmp_path / "mosquitto", port=port, websockets_port=ws_port)
    sockets = _sockets_of(broker)
    assert {p for _, p in sockets} == {port, ws_port}
    assert {address for address, _ in sockets} <= LOOPBACK, sockets


@pytest.mark.embedded
def test_the_embedded_broker_listens_on_loopback_only(tmp_path: Path) -> None:
    port, v311_port = free_port(), free_port()
    plan = BrokerPlan("embedded", f"mqtt://{LOCAL_HOST}:{port}")
    broker = make_broker(plan, tmp_path / "embedded", port=port, v311_port=v311_port)
    sockets = _sockets_of(broker)
    assert {p for _, p in sockets} == {port, v311_port}
    assert {address for address, _ in sockets} <= LOOPBACK, sockets
