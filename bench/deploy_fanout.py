"""Deploy fan-out: one workflow deployed to ``--count`` agents at once, end to end.

A private mosquitto, the controller (its own process) and ``--count`` simulated agents (one
process, :mod:`bench._exec_fleet`) that take commands through the real agent's command path:
each agent's :class:`~edge_agent.commands.CommandHandler`, SQLite
:class:`~edge_agent.outbox.Outbox` (events committed before they are published, deleted on
PUBACK) and :class:`~edge_agent.execution.executor.Executor` (preflight, the step as a
subprocess in a process group of its own). Only the MQTT connection is the simulator's.

Every environment is registered (``env-create``) and online before the clock starts. Then
one ``deploy`` request per environment goes to the controller over MQTT 5 request/response
(``--concurrency`` in flight at once), all for the same workflow: one step running
``true``. Measured from just before the first request:

- requests answered: every ``deploy`` request had its reply (the gate passed, the command
  was published);
- succeeded (events): an observer subscribed to ``R/env/+/events`` has seen a
  ``succeeded`` for every deployment;
- succeeded (controller): the controller has stored a ``succeeded`` of every deployment in
  its operations log (and moved the deployment's state with it): the latest receipt time
  ``at`` (controller clock) of those events. The log is read with ``event-list`` from a
  cursor until it is complete; reading it does not delay the figure. This is the figure
  held against the goal: 500 agents in < 10 s. The newest deployments' states are checked
  with ``deployment-list`` afterwards;
- operations-log ingest: the events of these deployments that the controller stored,
  divided by the span of their receipt times; and how long after the last event reached
  the observer the controller had stored it (``log lag``).

Then the operations log's capacity, apart from how fast agents produce events: a burst of
``--burst`` events (``pong``, each a new ``(env, src, seq)`` of the registered environments)
from one raw publisher (:mod:`edge_agent.simulator.wire`), then one last marker event. The ingest
capacity is the burst over the time from its first publish to the controller's receipt
(``at``) of the marker, once the marker can be read from the log; every event of the burst
is then counted in the log, once.

Online before the clock starts is judged from the controller's retained views (``env-list``
of hundreds of environments does not fit in one reply).

    python -m bench.deploy_fanout --count 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiomqtt

from bench._common import (
    BENCH_SIGNER,
    BenchUnavailable,
    Controller,
    Report,
    add_common_arguments,
    bench_broker,
    percentiles,
    run_main,
    scratch_dir,
)
from edgeplane.controller.errors import ControllerError
from edgeplane.controller.operator.client import ControllerClient
from edgeplane.edge_agent.simulator.wire.errors import WireError
from edgeplane.edge_agent.simulator.wire.handshake import connect
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import EVENT, VIEW, encode
from edgeplane.shared.errors import DecodeError, InvalidTopic
from edgeplane.shared.messages import EnvView, Event, Pong, Succeeded
from edgeplane.shared.rpc import (
    DeploymentInfo,
    DeploymentList,
    DeployRequest,
    EnvCreate,
    EnvList,
    EventList,
    LoggedEvent,
)
from edgeplane.shared.topics import TopicKind, TopicRoot
from edgeplane.shared.workflow import Step, Workflow

__all__ = ["add_arguments", "main", "run"]

GOAL_SECONDS: Final = 10.0  # the goal, for 500 agents on this machine
GOAL_COUNT: Final = 500
LOG_LAG_GOAL: Final = 1.0  # seconds: the operations log keeps up with the fleet
PREFIX: Final = "fan"
POLL: Final = 0.1  # seconds between two reads of the operations log
LOG_PAGE: Final = 150  # log entries per event-list reply (a reply must stay under 64 KiB)
STATE_SAMPLE: Final = 200  # newest deployments whose state is checked at the end
BURST: Final = 10_000  # events in the ingest-capacity burst
WORKFLOW: Final = Workflow(
    name="fanout",
    version="1.0.0",
    steps=[Step(name="run", run=["true"], timeout=60)],
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency", type=int, default=32, help="deploy requests in flight at once"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="most seconds to wait for all to succeed"
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=BURST,
        help=f"events in the ingest-capacity burst (default {BURST}; 0: skip it)",
    )
    parser.add_argument(
        "--fleet-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="processes the simulated agents are spread over (default: one per CPU): "
        "hundreds of executor threads in one process starve its event loop",
    )
    parser.add_argument(
        "--agents-dir",
        type=Path,
        default=None,
        help="where the simulated agents keep their state (outboxes, executor records, "
        "working directories); default: the scratch directory. All agents share this one "
        "disk, where a real fleet has one each",
    )


async def run(args: argparse.Namespace) -> Report:
    count = args.count
    # aiomqtt warns whenever more than 10 publishes await their PUBACK: here that is the
    # point (--concurrency requests in flight), not a problem.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    report = Report(
        "deploy_fanout",
        {
            "count": count,
            "concurrency": args.concurrency,
            "workflow": "one step: true",
            "agents_dir": str(args.agents_dir or "the scratch directory"),
            "fleet_processes": args.fleet_processes,
        },
    )
    root = TopicRoot(f"bench/{uuid.uuid4().hex[:8]}/edgeplane/v1")
    with scratch_dir("deploy-fanout") as work, bench_broker(work) as broker:
        controller = Controller(broker.url, root, work / "controller.db", work / "controller.log")
        controller.start()
        try:
            url = BrokerUrl.parse(broker.url)
            async with ControllerClient(url, root, connect_timeout=10) as client:
                await _until_controller_answers(client, controller)
                shares = _shares(count, args.fleet_processes)
                ids = [f"{prefix}-{i:05d}" for prefix, size in shares for i in range(size)]
                await _register(client, ids, args.concurrency)
                async with (
                    _observer(url, root) as observer,
                    _fleet(broker.url, root, shares, _agents_dir(args, work)) as online_seconds,
                ):
                    report.note("fleet online (s)", online_seconds)
                    await _until_all_online(observer, ids, controller)
                    await _measure(client, controller, observer, ids, args, report)
                if args.burst > 0:
                    await _burst(client, url, root, ids, args.burst, report)
        except ControllerError as exc:  # a refusal, no answer, a lost broker: say which
            raise BenchUnavailable(f"{exc}") from exc
        finally:
            controller.stop()
    return report


# --- setting up -------------------------------------------------------------------------------
async def _until_controller_answers(client: ControllerClient, controller: Controller) -> None:
    deadline = time.monotonic() + 30
    while True:
        controller.check_alive()
        try:
            await client.call(EnvList(), within=1.0)
            return
        except ControllerError:
            if time.monotonic() > deadline:
                raise BenchUnavailable("the controller did not answer within 30 s") from None


async def _register(client: ControllerClient, ids: list[str], concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def create(env: str) -> None:
        async with limit:
            request = EnvCreate(id=env, stage="dev", location="bench", purpose="fanout")
            await client.call(request, within=30)

    await asyncio.gather(*(create(env) for env in ids))


def _agents_dir(args: argparse.Namespace, work: Path) -> Path:
    """A fresh directory for the agents' state (removed with the fleet)."""
    parent = work if args.agents_dir is None else args.agents_dir
    return Path(tempfile.mkdtemp(prefix="agents-", dir=parent))


def _shares(count: int, processes: int) -> list[tuple[str, int]]:
    """How the agents are split between the fleet processes: (id prefix, how many)."""
    processes = max(1, min(processes, count))
    return [
        (f"{PREFIX}{k}", count // processes + (k < count % processes)) for k in range(processes)
    ]


@contextlib.asynccontextmanager
async def _fleet(
    broker: str, root: TopicRoot, shares: list[tuple[str, int]], agents: Path
) -> AsyncIterator[float]:
    """The simulated agents, in processes of their own (one per share); yields how long
    they took to connect."""
    async with contextlib.AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(_fleet_process(broker, root, prefix, size, agents))
            for prefix, size in shares
        ]
        seconds = await asyncio.gather(*(_until_online(worker, agents) for worker in workers))
        yield max(seconds)
    shutil.rmtree(agents, ignore_errors=True)


@contextlib.asynccontextmanager
async def _fleet_process(
    broker: str, root: TopicRoot, prefix: str, size: int, agents: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with (agents / f"{prefix}.log").open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._exec_fleet",
            "--broker",
            broker,
            "--topic-root",
            str(root),
            "--count",
            str(size),
            "--prefix",
            prefix,
            "--state-root",
            str(agents),
            "--command-key",
            BENCH_SIGNER.public_key_b64,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


def _read_logs(agents: Path) -> str:
    return "".join(log.read_text(errors="replace") for log in sorted(agents.glob("*.log")))


async def _until_online(process: asyncio.subprocess.Process, agents: Path) -> float:
    """The fleet process's report that all its agents are online: how long that took."""
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    if not line:
        logs = _read_logs(agents)
        raise BenchUnavailable(
            f"a fleet process exited while connecting; logs end:\n{logs[-2000:]}"
        )
    return float(json.loads(line)["seconds"])


async def _until_all_online(observer: Observer, ids: list[str], controller: Controller) -> None:
    """The controller judges every environment online and registered (the gate would
    refuse the deployment otherwise)."""
    wanted = set(ids)
    deadline = time.monotonic() + 60
    while not wanted <= observer.ready:
        controller.check_alive()
        left = deadline - time.monotonic()
        if left <= 0:
            missing = len(wanted - observer.ready)
            raise BenchUnavailable(f"{missing} environments never came online")
        observer.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(observer.changed.wait(), min(left, 1.0))


# --- measuring --------------------------------------------------------------------------------
class Observer:
    """The controller's views (which environments are online and registered) and every
    event on ``R/env/+/events``, with its arrival time."""

    def __init__(self, root: TopicRoot) -> None:
        self.root = root
        self.ready: set[str] = set()
        self.events = 0
        self.succeeded: dict[str, float] = {}  # deployment id -> first succeeded arrival
        self.last_wall = 0.0
        self.changed = asyncio.Event()

    async def pump(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            with contextlib.suppress(DecodeError, InvalidTopic):
                if self.root.parse(message.topic.value).kind is TopicKind.VIEW:
                    self._take_view(VIEW.decode(payload))
                else:
                    self._take_event(EVENT.decode(payload))
            self.changed.set()

    def _take_view(self, view: EnvView) -> None:
        if view.status == "online" and view.registered:
            self.ready.add(view.env)
        else:
            self.ready.discard(view.env)

    def _take_event(self, event: Event) -> None:
        self.events += 1
        self.last_wall = time.time()
        if isinstance(event, Succeeded):
            self.succeeded.setdefault(event.dep, time.monotonic())


@contextlib.asynccontextmanager
async def _observer(url: BrokerUrl, root: TopicRoot) -> AsyncIterator[Observer]:
    observer = Observer(root)
    async with aiomqtt.Client(
        url.host,
        url.port,
        identifier=f"bench-observer-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_queued_incoming_messages=0,
    ) as client:
        await client.subscribe(root.all_views(), qos=1)
        await client.subscribe(root.all_events(), qos=1)
        pump = asyncio.create_task(observer.pump(client), name="bench-observer")
        try:
            yield observer
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await pump


async def _measure(
    client: ControllerClient,
    controller: Controller,
    observer: Observer,
    ids: list[str],
    args: argparse.Namespace,
    report: Report,
) -> None:
    log = OperationsLog(client)
    await log.read_new()  # start the cursor after everything logged so far
    log.entries.clear()
    _, cpu_before = controller.sample()
    began, began_wall = time.monotonic(), time.time()
    deps, answered_at = await _deploy_all(client, ids, args.concurrency)
    requests_done = answered_at - began
    events_done = await _until_events(observer, deps, args.timeout) - began
    controller_done = await log.until_succeeded(deps, args.timeout) - began_wall
    rss, cpu_after = controller.sample()
    await _check_states(client, deps)
    _report(
        report,
        count=len(ids),
        requests_done=requests_done,
        events_done=events_done,
        controller_done=controller_done,
        logged=[entry for entry in log.entries if entry.event.dep in deps],
        observer=observer,
        controller_cpu=cpu_after - cpu_before,
        controller_rss=rss,
        latencies=[observer.succeeded[dep] - began for dep in deps],
    )


async def _deploy_all(
    client: ControllerClient, ids: list[str], concurrency: int
) -> tuple[set[str], float]:
    """One deploy request per environment; the deployment ids and when the last reply came."""
    limit = asyncio.Semaphore(concurrency)

    async def deploy(env: str) -> DeploymentInfo:
        async with limit:
            info: DeploymentInfo = await client.call(
                DeployRequest(env=env, workflow=WORKFLOW), within=60
            )
            return info

    infos = await asyncio.gather(*(deploy(env) for env in ids))
    return {info.id for info in infos}, time.monotonic()


async def _until_events(observer: Observer, deps: set[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not deps <= observer.succeeded.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            missing = len(deps - observer.succeeded.keys())
            raise BenchUnavailable(f"{missing} deployments sent no succeeded within {timeout:g} s")
        observer.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(observer.changed.wait(), min(left, 1.0))
    return max(observer.succeeded[dep] for dep in deps)


class OperationsLog:
    """The controller's operations log, read page by page from a cursor."""

    def __init__(self, client: ControllerClient) -> None:
        self.client = client
        self.after = 0
        self.entries: list[LoggedEvent] = []
        self.succeeded: set[str] = set()

    async def read_new(self) -> None:
        while True:
            page: list[LoggedEvent] = await self.client.call(
                EventList(after=self.after, limit=LOG_PAGE), within=30
            )
            if not page:
                return
            self.after = page[-1].id
            self.entries += page
            self.succeeded.update(e.event.dep for e in page if isinstance(e.event, Succeeded))

    async def until_succeeded(self, deps: set[str], timeout: float) -> float:
        """When (controller clock, unix seconds) the log held a ``succeeded`` of every
        deployment in ``deps``."""
        deadline = time.monotonic() + timeout
        while True:
            await self.read_new()
            if deps <= self.succeeded:
                return max(
                    e.at
                    for e in self.entries
                    if isinstance(e.event, Succeeded) and e.event.dep in deps
                )
            if time.monotonic() > deadline:
                missing = len(deps - self.succeeded)
                raise BenchUnavailable(f"{missing} deployments not succeeded in the log")
            await asyncio.sleep(POLL)


async def _check_states(client: ControllerClient, deps: set[str]) -> None:
    """The newest deployments' records say ``succeeded`` too (one reply holds ~200)."""
    infos: list[DeploymentInfo] = await client.call(DeploymentList(limit=STATE_SAMPLE), within=30)
    wrong = [f"{i.id}: {i.state}" for i in infos if i.id in deps and i.state != "succeeded"]
    if wrong:
        raise BenchUnavailable(f"deployments not succeeded at the controller: {wrong[:5]}")


async def _burst(
    client: ControllerClient,
    url: BrokerUrl,
    root: TopicRoot,
    ids: list[str],
    size: int,
    report: Report,
) -> None:
    """The operations log's ingest capacity: ``size`` events as fast as one publisher can
    send them, then a marker; see the module docstring."""
    log = OperationsLog(client)
    await log.read_new()  # the cursor after everything logged so far
    src = f"burst-{uuid.uuid4().hex[:6]}"
    *events, marker = _burst_events(ids, src, size + 1)
    try:
        publisher = await connect(url, client_id=f"bench-burst-{uuid.uuid4().hex[:8]}")
    except WireError as exc:
        raise BenchUnavailable(f"the burst publisher could not connect: {exc}") from exc
    try:
        began = time.time()
        for start in range(0, len(events), 1000):
            await asyncio.gather(
                *(
                    publisher.publish(root.events(e.env), encode(e), qos=1)
                    for e in events[start : start + 1000]
                )
            )
        published = time.time()
        await publisher.publish(root.events(marker.env), encode(marker), qos=1)
    except WireError as exc:
        raise BenchUnavailable(f"the burst publisher failed: {exc}") from exc
    finally:
        await publisher.disconnect()
    logged_marker = await _logged_marker(client, marker, log.after)
    logged = await _count_logged(log, src)
    report.note("burst: events", size)
    report.note("burst: publisher (events/s)", size / (published - began))
    report.note("burst: events in the log (once each)", logged)
    report.note(
        "operations-log ingest capacity (events/s)", (size + 1) / (logged_marker.at - began)
    )
    if logged != size + 1:
        raise BenchUnavailable(f"the log holds {logged} of the {size + 1} burst events")


def _burst_events(ids: list[str], src: str, size: int) -> list[Pong]:
    """``size`` pong events round-robin over the environments, each stream's ``seq`` from 1."""
    seqs = dict.fromkeys(ids, 0)
    events: list[Pong] = []
    for env in itertools.islice(itertools.cycle(ids), size):
        seqs[env] += 1
        events.append(Pong(env=env, seq=seqs[env], src=src))
    return events


async def _logged_marker(client: ControllerClient, marker: Pong, after: int) -> LoggedEvent:
    """The marker event once the controller has logged it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page: list[LoggedEvent] = await client.call(
            EventList(env=marker.env, after=after, limit=LOG_PAGE), within=30
        )
        for logged in page:
            if (logged.event.src, logged.event.seq) == (marker.src, marker.seq):
                return logged
        after = page[-1].id if page else after
        if not page:
            await asyncio.sleep(POLL)
    raise BenchUnavailable("the burst's marker event never reached the operations log")


async def _count_logged(log: OperationsLog, src: str) -> int:
    await log.read_new()
    return len({(e.event.env, e.event.seq) for e in log.entries if e.event.src == src})


def _report(
    report: Report,
    *,
    count: int,
    requests_done: float,
    events_done: float,
    controller_done: float,
    logged: list[LoggedEvent],
    observer: Observer,
    controller_cpu: float,
    controller_rss: int,
    latencies: list[float],
) -> None:
    times = [logged.at for logged in logged]
    span = max(times) - min(times) if len(times) > 1 else 0.0
    keys = {(e.event.env, e.event.src, e.event.seq) for e in logged}
    report.note("deploy requests answered (s)", requests_done)
    report.note("all succeeded, events seen (s)", events_done)
    report.note("all succeeded, controller (s)", controller_done)
    report.note("succeeded after first request (s)", percentiles(latencies))
    report.note("events seen on the broker", observer.events)
    report.note("events in the operations log", len(logged))
    report.note("events logged twice", len(logged) - len(keys))
    report.note("operations-log ingest (events/s)", len(logged) / span if span else None)
    report.note("controller CPU during the fan-out (s)", controller_cpu)
    report.note("controller RSS (MB)", controller_rss / 2**20)
    report.goal(
        f"{count} agents: all deployments succeeded at the controller",
        controller_done,
        GOAL_SECONDS,
        "s",
        higher_is_better=False,
    )
    report.goal(
        "operations log behind the last event",
        max(0.0, max(times) - observer.last_wall) if times else None,
        LOG_LAG_GOAL,
        "s",
        higher_is_better=False,
    )
    if count != GOAL_COUNT:
        print(f"  (the goal is for {GOAL_COUNT} agents; this run had {count})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deploy_fanout", description=__doc__)
    add_common_arguments(parser, default_count=GOAL_COUNT)
    add_arguments(parser)
    return run_main("deploy_fanout", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
