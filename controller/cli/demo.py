"""``edgeplane demo``: a one-minute tour of edgeplane on embedded defaults.

It starts a private broker on a free loopback port (mosquitto if installed, else the
embedded broker), the controller and three agents, all real processes working in one
temporary directory; registers two edge environments beside the cloud one; deploys a sample
workflow that passes preflight on one and is refused on the other (a missing secret); kills
one agent to show it going offline, then restarts and kills it until the controller raises
the flapping alert; and prints a short summary. It exits 0 when the story went as told, 1
with the step that failed and the logs of the processes otherwise, 130 when interrupted;
in every case it stops everything it started and removes its temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from edgeplane.shared.errors import EdgeplaneError
from edgeplane.shared.settings import Setting, add_flags, choice, resolve
from edgeplane.shared.topics import DEFAULT_ROOT, TopicRoot

if TYPE_CHECKING:
    from edgeplane.controller.broker.choice import BrokerKind
    from edgeplane.controller.demo.fleet import DemoFleet
    from edgeplane.controller.demo.story import DemoOutcome

__all__ = ["add_parser", "run"]

_SETTINGS = (
    Setting(
        "broker_kind",
        choice("auto", "mosquitto", "embedded"),
        "auto",
        "the private broker: mosquitto if installed, else the embedded one (auto); or insist "
        "on one",
    ),
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a one-minute tour: environments, a deployment, a refusal, offline, flapping",
        description="Start a private broker, the controller and three agents in a temporary "
        "directory, deploy a sample workflow, kill an agent until it flaps, print a summary, "
        "and stop everything.",
    )
    add_flags(parser, _SETTINGS)
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file of these settings; env EDGEPLANE_CONFIG"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edgeplane.controller.demo.story import summary, surprises

    config_file = args.config or os.environ.get("EDGEPLANE_CONFIG") or None
    broker_kind = resolve(_SETTINGS, args, os.environ, config_file)["broker_kind"]
    started = time.monotonic()
    try:
        outcome = asyncio.run(_demo(broker_kind, started))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    if outcome is None:
        return 1
    print()
    print(summary(outcome))
    unexpected = surprises(outcome)
    for surprise in unexpected:
        print(f"edgeplane demo: unexpected: {surprise}", file=sys.stderr)
    return 1 if unexpected else 0


async def _demo(broker_kind: BrokerKind, started: float) -> DemoOutcome | None:
    """The story on a fleet of its own, stopped and removed at the end; None when it
    failed (and was reported, with the logs of the processes)."""
    from edgeplane.controller.demo.fleet import DemoFleet

    # SIGTERM stops the story like Ctrl-C does; leaving the fleet then stops everything.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    async with DemoFleet(TopicRoot(DEFAULT_ROOT)) as fleet:
        _say(started, f"working in {fleet.workdir}")
        try:
            return await _story(fleet, broker_kind, started)
        except asyncio.CancelledError:
            print("edgeplane demo: interrupted; stopping everything", file=sys.stderr)
            raise
        except EdgeplaneError as exc:
            print(f"edgeplane demo: {exc}", file=sys.stderr)
            _print_logs(fleet)
            return None


async def _story(fleet: DemoFleet, broker_kind: BrokerKind, started: float) -> DemoOutcome:
    from edgeplane.controller.demo.fleet import FlapSettings
    from edgeplane.controller.demo.story import FleetWatch, tell
    from edgeplane.controller.mqtt import Connection, unique_client_id
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.controller.tasks import cancel_and_wait
    from edgeplane.shared.broker_url import BrokerUrl

    await fleet.start_broker(broker_kind)
    _say(started, f"broker: private {fleet.broker_kind} on {fleet.broker_url}")
    await fleet.start_controller(FlapSettings())
    url = BrokerUrl.parse(fleet.broker_url)
    async with (
        Connection(url, unique_client_id("edgeplane-demo")) as connection,
        ControllerClient(url, fleet.root) as controller,
    ):
        watch = FleetWatch(connection, fleet.root)
        await watch.subscribe()
        reader = asyncio.create_task(watch.run(), name="demo-watch")
        try:
            return await tell(fleet, controller.call, watch, lambda text: _say(started, text))
        finally:
            await cancel_and_wait(reader)


def _say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)


def _print_logs(fleet: DemoFleet) -> None:
    """The last lines of every child's output: what went wrong is usually there."""
    for child in fleet.children():
        tail = child.tail()
        if tail:
            print(f"--- last lines of {child.name} ---\n{tail}", file=sys.stderr)
