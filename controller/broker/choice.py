"""Which broker to use, and the process of one to start: for ``edgeplane up`` and the demo.

In order of preference: the broker given with ``--broker`` (neither started nor stopped);
one already listening on the loopback port; a private mosquitto (on PATH or in /usr/sbin);
the embedded broker of the ``iotcore`` package, where there is no mosquitto at all. A kind
of ``mosquitto`` or ``embedded`` insists on starting that one (never reusing a broker found
on the port).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from edgeplane.controller.broker.embedded import EmbeddedBroker, embedded_available
from edgeplane.controller.broker.mosquitto import (
    MosquittoProcess,
    find_mosquitto,
    packaged_mosquitto_config,
)
from edgeplane.controller.broker.process import BrokerProcess, port_open
from edgeplane.controller.errors import BrokerStartError

__all__ = [
    "LOCAL_HOST",
    "BrokerKind",
    "BrokerPlan",
    "Plan",
    "choose_broker",
    "make_broker",
    "plan_broker",
]

LOCAL_HOST: Final = "127.0.0.1"
BrokerKind = Literal["auto", "mosquitto", "embedded"]
Plan = Literal["given", "existing", "mosquitto", "embedded"]


@dataclass(frozen=True, slots=True)
class BrokerPlan:
    """The broker to use: ``given`` or ``existing`` (used as it is), or one to start."""

    plan: Plan
    url: str


def choose_broker(
    *,
    given: str | None,
    kind: BrokerKind,
    port: int,
    port_in_use: bool,
    mosquitto_found: bool,
    embedded_found: bool,
) -> BrokerPlan:
    """Which broker to use, or a :class:`BrokerStartError` saying why there is none."""
    local = f"mqtt://{LOCAL_HOST}:{port}"
    if given is not None:
        return BrokerPlan("given", given)
    if kind == "auto" and port_in_use:
        return BrokerPlan("existing", local)
    if port_in_use:
        raise BrokerStartError(
            f"cannot start {kind} on {LOCAL_HOST}:{port}: the port is in use "
            f"(use --broker {local} to use what listens there, or another --port)"
        )
    if kind in ("auto", "mosquitto") and mosquitto_found:
        return BrokerPlan("mosquitto", local)
    if kind == "mosquitto":
        raise BrokerStartError("--broker-kind mosquitto: no mosquitto on PATH or in /usr/sbin")
    if embedded_found:
        return BrokerPlan("embedded", local)
    if kind == "embedded":
        raise BrokerStartError("--broker-kind embedded: the iotcore package is missing")
    raise BrokerStartError(
        "no broker: nothing listens on "
        f"{LOCAL_HOST}:{port}, mosquitto is not installed and the iotcore package is missing"
    )


def plan_broker(
    *, given: str | None, kind: BrokerKind, port: int, reuse: bool = True
) -> BrokerPlan:
    """:func:`choose_broker` on what this machine has. ``reuse=False``: never use a broker
    found on the port (the demo's private one is on a free port)."""
    return choose_broker(
        given=given,
        kind=kind,
        port=port,
        port_in_use=reuse and given is None and port_open(LOCAL_HOST, port),
        mosquitto_found=find_mosquitto() is not None,
        embedded_found=embedded_available(),
    )


def make_broker(
    plan: BrokerPlan,
    data_dir: Path,
    *,
    port: int,
    websockets_port: int | None = None,
    v311_port: int | None = None,
) -> BrokerProcess:
    """The (unstarted) broker process of a ``mosquitto`` or ``embedded`` plan, on loopback:
    mosquitto with the packaged config, optionally MQTT over WebSockets; the embedded one
    optionally with an MQTT 3.1.1 listener."""
    if plan.plan == "mosquitto":
        return MosquittoProcess(
            packaged_mosquitto_config(),
            data_dir,
            host=LOCAL_HOST,
            port=port,
            websockets_port=websockets_port,
        )
    if plan.plan == "embedded":
        return EmbeddedBroker(data_dir, host=LOCAL_HOST, port=port, v311_port=v311_port)
    raise ValueError(f"a {plan.plan} broker is not ours to start")
