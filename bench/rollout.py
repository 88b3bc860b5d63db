"""Rollouts: one workflow rolled out to ``--count`` simulated environments in four waves,
and one that aborts.

A private mosquitto, the controller (its own process) and the simulated agents of the
deploy fan-out (:mod:`bench._exec_fleet`: the real agent's command handler, outbox and
executor each, in ``--fleet-processes`` processes). Every environment is registered
(location ``bench``) and online before the clock starts.

1. A rollout (``rollout-start``, selector ``location=bench``, waves ``1,10%,50%,100%``,
   ``--bake`` seconds between waves, concurrency: the whole wave) of a one-step job
   (``true``) to every environment, followed with ``rollout-list`` until it succeeded:
   the time beyond the bakes (the wall time less four bakes: one after each wave) is what
   the rollout itself costs; and the controller's CPU seconds meanwhile.
2. A rollout of a workflow that needs a secret no simulated agent has (every preflight
   fails), waves ``100,100%``, ``--max-failures 10%`` judged after ``--min-executed 20``:
   the **abort latency** is from the arrival (at an observer) of the 20th ``rejected``
   event to the arrival of the ``rollout-aborted`` alert; the second wave must stay
   untouched (no target of it sent).

    python -m bench.rollout --count 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Final

import aiomqtt

from bench._common import (
    BenchUnavailable,
    Controller,
    Report,
    add_common_arguments,
    bench_broker,
    run_main,
    scratch_dir,
)
from bench.deploy_fanout import (
    _agents_dir,
    _fleet,
    _observer,
    _register,
    _shares,
    _until_all_online,
    _until_controller_answers,
)
from edgeplane.controller.errors import ControllerError
from edgeplane.controller.operator.client import ControllerClient
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import EVENT
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.messages import CommandRejected
from edgeplane.shared.rpc import RolloutInfo, RolloutList, RolloutShow, RolloutStart
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import Requires, Step, Workflow

__all__ = ["add_arguments", "main", "run"]

GOAL_COUNT: Final = 1000
OVERHEAD_GOAL: Final = 20.0  # seconds beyond the bakes, 1,000 environments, four waves
ABORT_GOAL: Final = 10.0  # seconds from the failure that crosses the threshold to the alert
MIN_EXECUTED: Final = 20
POLL: Final = 0.1
JOB: Final = Workflow(
    name="rollout-bench", version="1.0.0", steps=[Step(name="run", run=["true"], timeout=60)]
)
FAILING: Final = Workflow(
    name="rollout-bench",
    version="2.0.0",
    requires=Requires(secrets=["BENCH_TOKEN"]),
    steps=[Step(name="run", run=["true"], timeout=60)],
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bake", type=float, default=2.0, help="seconds between waves")
    parser.add_argument("--timeout", type=float, default=300.0, help="most seconds for the rollout")
    parser.add_argument(
        "--fleet-processes", type=int, default=os.cpu_count() or 1, help="fleet processes"
    )
    parser.add_argument("--agents-dir", default=None, help="where the agents keep state")


async def run(args: argparse.Namespace) -> Report:
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    count = args.count
    report = Report(
        "rollout",
        {"count": count, "waves": "1,10%,50%,100%", "bake": args.bake, "workflow": "true"},
    )
    root = TopicRoot(f"bench/{uuid.uuid4().hex[:8]}/edgeplane/v1")
    with scratch_dir("rollout") as work, bench_broker(work) as broker:
        controller = Controller(broker.url, root, work / "controller.db", work / "controller.log")
        controller.start()
        try:
            url = BrokerUrl.parse(broker.url)
            async with ControllerClient(url, root, connect_timeout=10) as client:
                await _until_controller_answers(client, controller)
                shares = _shares(count, args.fleet_processes)
                ids = [f"{prefix}-{i:05d}" for prefix, size in shares for i in range(size)]
                await _register(client, ids, 32)
                async with (
                    _observer(url, root) as observer,
                    _fleet(broker.url, root, shares, _agents_dir(args, work)) as online,
                ):
                    report.note("fleet online (s)", online)
                    await _until_all_online(observer, ids, controller)
                    await _succeeding(client, controller, args, report)
                    if count >= 2 * MIN_EXECUTED:
                        await _aborting(client, controller, url, root, count, report)
        except ControllerError as exc:
            raise BenchUnavailable(f"{exc}") from exc
        finally:
            controller.stop()
    return report


async def _until_over(
    client: ControllerClient, controller: Controller, rollout: str, timeout: float
) -> RolloutInfo:
    deadline = time.monotonic() + timeout
    while True:
        controller.check_alive()
        listed: list[RolloutInfo] = await client.call(RolloutList(limit=5), 30)
        (info,) = [r for r in listed if r.id == rollout]
        if info.state in ("succeeded", "aborted", "failed"):
            return info
        if time.monotonic() > deadline:
            raise BenchUnavailable(f"rollout {rollout} not over within {timeout:g} s: {info}")
        await asyncio.sleep(POLL)


async def _succeeding(
    client: ControllerClient, controller: Controller, args: argparse.Namespace, report: Report
) -> None:
    request = RolloutStart(
        workflow=JOB,
        selector={"location": "bench"},
        bake=args.bake,
        concurrency=max(1, args.count),
        target_timeout=120.0,
    )
    _, cpu_before = controller.sample()
    began = time.monotonic()
    started: RolloutInfo = await client.call(request, 30)
    report.note("waves", [w.size for w in started.waves])
    info = await _until_over(client, controller, started.id, args.timeout)
    seconds = time.monotonic() - began
    _, cpu_after = controller.sample()
    report.note("rollout state", info.state)
    report.note("targets succeeded", info.counts.get("succeeded", 0))
    report.note("rollout wall time (s)", seconds)
    bakes = args.bake * len(started.waves)
    overhead = seconds - bakes if info.state == "succeeded" else None
    report.note("controller CPU during the rollout (s)", cpu_after - cpu_before)
    report.goal("time beyond the bakes", overhead, OVERHEAD_GOAL, "s", higher_is_better=False)


class _Alerts:
    """Arrival times of ``rejected`` events and of rollout alerts."""

    def __init__(self) -> None:
        self.rejected: list[float] = []
        self.alert: float | None = None
        self.changed = asyncio.Event()

    async def pump(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            now = time.monotonic()
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if "/alerts/" in message.topic.value:
                if b"rollout-aborted" in payload and b'"raised"' in payload:
                    self.alert = self.alert or now
            else:
                with contextlib.suppress(DecodeError):
                    if isinstance(EVENT.decode(payload), CommandRejected):
                        self.rejected.append(now)
            self.changed.set()


@contextlib.asynccontextmanager
async def _alerts(url: BrokerUrl, root: TopicRoot) -> AsyncIterator[_Alerts]:
    alerts = _Alerts()
    async with aiomqtt.Client(
        url.host,
        url.port,
        identifier=f"bench-alerts-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_queued_incoming_messages=0,
    ) as client:
        await client.subscribe(f"{root}/alerts/+", qos=1)
        await client.subscribe(root.all_events(), qos=1)
        pump = asyncio.create_task(alerts.pump(client))
        try:
            yield alerts
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await pump


async def _aborting(
    client: ControllerClient,
    controller: Controller,
    url: BrokerUrl,
    root: TopicRoot,
    count: int,
    report: Report,
) -> None:
    first = min(count // 2, 100)
    async with _alerts(url, root) as alerts:
        request = RolloutStart(
            workflow=FAILING,
            selector={"location": "bench"},
            waves=[str(first), "100%"],
            max_failures="10%",
            min_executed=MIN_EXECUTED,
            bake=0.0,
            concurrency=count,
        )
        started: RolloutInfo = await client.call(request, 30)
        info = await _until_over(client, controller, started.id, 120)
        deadline = time.monotonic() + 15
        while alerts.alert is None and time.monotonic() < deadline:
            alerts.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(alerts.changed.wait(), 1.0)
    shown: RolloutInfo = await client.call(RolloutShow(id=started.id), 30)
    report.note("aborting rollout state", info.state)
    untouched = sum(1 for t in shown.targets if t.wave == 1 and t.state == "pending")
    report.note("second wave untouched", f"{untouched} of {count - first}")
    latency = None
    if alerts.alert is not None and len(alerts.rejected) >= MIN_EXECUTED:
        latency = alerts.alert - sorted(alerts.rejected)[MIN_EXECUTED - 1]
    report.note("failures counted when shown", shown.failures)
    report.goal("abort latency", latency, ABORT_GOAL, "s", higher_is_better=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    add_common_arguments(parser, default_count=GOAL_COUNT)
    add_arguments(parser)
    return run_main("rollout", run, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
