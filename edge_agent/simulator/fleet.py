"""The fleet simulator: many edge agents speaking the real edgeplane protocol from one process.

Each simulated agent (:mod:`~edgeplane.edge_agent.simulator.agent`) has its own MQTT
connection (client id = environment id), registers the contract's will, subscribes to its
``cmd`` topic, publishes its retained online status with a message expiry of about three
intervals, heartbeats every interval from a random phase, answers pings with pongs, and
reconnects with capped, jittered backoff when it is dropped. Its status messages come from
the agent's own :class:`~edgeplane.edge_agent.heartbeat.HeartbeatBuilder`, with simulated
metrics. Connections come from :mod:`edgeplane.edge_agent.simulator.wire`: one
``asyncio.Protocol`` each and one keepalive scheduler for all, so ten thousand idle agents
cost little more than their sockets.

For benchmarks::

    async with Fleet(BrokerUrl.parse("mqtt://127.0.0.1:1883"), TopicRoot(), count=10_000,
                     interval=10, on_heartbeat=record) as fleet:
        await fleet.start()             # all connected, every first online acknowledged
        agent = fleet.agents[42]        # agent.env == "sim-00042"
        await agent.kill()              # no DISCONNECT: the broker publishes the will
        agent = fleet.restart(42)       # a new agent of that id, continuing its bdseq
        fleet.agents[7].freeze()        # heartbeats stop, the connection stays up
        fleet.agents[7].thaw()          # a heartbeat at once, then every interval again
    # leaving the block stops every agent still running cleanly (offline/shutdown)

``record(env, seq, t)`` is called for every heartbeat just before it is written, with
``t = time.monotonic()`` (a system-wide clock on Linux, comparable across processes).

With ``execution=ExecutionSettings(state_root)`` the agents run deployments through the
real agent's command path (:mod:`~edgeplane.edge_agent.simulator.command_path`) instead of
only answering pings, each with its state in ``state_root/{env}/``.

From the command line: ``edge-agent simulate --count N`` (or
``python -m edgeplane.edge_agent.simulator``), see :mod:`~edgeplane.edge_agent.simulator.cli`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import resource
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from edgeplane.edge_agent.heartbeat import message_expiry, new_boot_id
from edgeplane.edge_agent.simulator.agent import SimulatedAgent
from edgeplane.edge_agent.simulator.heartbeats import BeatSchedule, SimulatedMetrics
from edgeplane.edge_agent.simulator.host import AgentSetup
from edgeplane.edge_agent.simulator.wire.errors import ConnectionClosed, WireError
from edgeplane.edge_agent.simulator.wire.keepalive import KeepaliveScheduler
from edgeplane.edge_agent.simulator.wire.properties import Properties
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import SystemClock
from edgeplane.shared.ids import validate_env_id
from edgeplane.shared.topics import TopicRoot

if TYPE_CHECKING:
    from edgeplane.edge_agent.simulator.command_path import CommandPath

__all__ = [
    "ConnectPacer",
    "ExecutionSettings",
    "Fleet",
    "FleetStats",
    "HeartbeatHook",
    "raise_open_files_limit",
]

log = structlog.get_logger("edgeplane.edge_agent.simulator.fleet")

HeartbeatHook = Callable[[str, int, float], None]
"""Called as ``hook(env, seq, monotonic_publish_time)`` for every heartbeat published."""

REPORT_EVERY: Final = 5.0  # seconds between progress / failure summaries in the log
DISK_THREADS: Final = 16  # threads deleting acknowledged events from the agents' outboxes


@dataclass
class FleetStats:
    """Counters over the fleet's life, for summaries and benchmarks."""

    connections: int = 0  # connections that got as far as their first online acknowledged
    failures: int = 0  # connection attempts that failed, and connections lost
    heartbeats: int = 0  # online messages acknowledged (the first of each connection too)
    events: int = 0  # pong / rejected events acknowledged
    refused: int = 0  # heartbeats the broker refused, or that found the in-flight window full
    last_error: str = ""


@dataclass(frozen=True)
class ExecutionSettings:
    """Run deployments with the real agent's command path; each agent's state (outbox,
    executor record, deployment working directories) in ``state_root/{env}/``.
    ``command_keys``: the public keys whose signed commands the agents run."""

    state_root: Path
    command_keys: tuple[bytes, ...] = ()


class ConnectPacer:
    """Hands out connection slots at most ``rate`` a second, so a whole fleet (re)connecting
    at once does not overwhelm the broker."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"connect rate must be positive, not {rate}")
        self._gap = 1.0 / rate
        self._next = float("-inf")

    def reserve(self, now: float) -> float:
        """Take the next free slot; return how long to wait for it."""
        slot = max(now, self._next)
        self._next = slot + self._gap
        return slot - now


class Fleet:
    """``count`` simulated agents in this process, one MQTT connection each.

    An async context manager: entering it starts the shared keepalive and heartbeat timers
    (and raises the soft open-files limit to the hard one), :meth:`start` connects the
    agents, leaving it stops every agent still running cleanly.

    Environment ids are ``{prefix}-{i:05d}`` for ``i`` in ``range(count)``; ``bdseq`` starts
    at the current unix time (so it differs across runs) and grows by one per connection;
    all agents share one boot id per fleet (``fleet.boot``).

    Parameters: ``broker`` and ``root`` (default ``edgeplane/v1``) say where; ``count``
    agents heartbeat every ``interval`` seconds (their online messages expire after about
    three intervals) and connect at most ``connect_rate`` a second, fleet-wide, at start
    and on every reconnect. ``on_heartbeat(env, seq, t)`` is called for every heartbeat
    just before it is written, ``t`` from ``time.monotonic()``. ``keepalive`` is the MQTT
    keepalive; ``beat_tick`` the granularity of the fleet's one heartbeat timer.
    ``execution`` gives every agent the real command path (see the module docstring); its
    executors' threads and outboxes are closed when the fleet is left.

    For benchmarks: ``agents`` (a list of :class:`~.agent.SimulatedAgent`, in id order),
    ``online`` (how many are connected and announced now), ``stats`` (:class:`FleetStats`),
    :meth:`start`, :meth:`restart`, :meth:`stop`.
    """

    def __init__(
        self,
        broker: BrokerUrl,
        root: TopicRoot | None = None,
        count: int = 1,
        interval: float = 10.0,
        prefix: str = "sim",
        connect_rate: float = 500.0,
        *,
        on_heartbeat: HeartbeatHook | None = None,
        keepalive: int = 30,
        beat_tick: float = 0.02,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
        execution: ExecutionSettings | None = None,
    ) -> None:
        if count < 0:
            raise ValueError(f"count must not be negative, not {count}")
        if not 0 < interval <= 86_400:
            raise ValueError(f"interval must be within (0, 86400] seconds, not {interval}")
        self.broker = broker
        self.root = root or TopicRoot()
        self.interval = interval
        self.on_heartbeat = on_heartbeat
        self.execution = execution
        self.boot = new_boot_id()
        self.bdseq_base = int(time.time())
        rng = rng or random.Random()
        self._setup = AgentSetup(
            broker=broker,
            root=self.root,
            interval=interval,
            keepalive=keepalive,
            ssl_context=ssl_context,
            boot=self.boot,
            clock=SystemClock(),
            metrics=SimulatedMetrics(rng).sample,
            online_properties=Properties(message_expiry=message_expiry(interval)),
            pinger=KeepaliveScheduler(),
            beats=BeatSchedule(beat_tick),
            rng=rng,
        )
        self._pacer = ConnectPacer(connect_rate)
        self.stats = FleetStats()
        self._online = 0
        validate_env_id(f"{prefix}-{max(count - 1, 0):05d}")
        self.agents = [
            SimulatedAgent(self, f"{prefix}-{i:05d}", last_bdseq=self.bdseq_base - 1)
            for i in range(count)
        ]
        self._unsettled = count
        self._all_settled = asyncio.Event()
        if count == 0:
            self._all_settled.set()
        # Deleting an acknowledged event is a synchronous SQLite commit (an fsync): a real
        # agent waits for its own disk, so the fleet's loop must not wait for all of them.
        self._disk: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._helpers: list[asyncio.Task[None]] = []

    @property
    def online(self) -> int:
        """How many agents are connected and announced right now."""
        return self._online

    async def __aenter__(self) -> Fleet:
        raise_open_files_limit()
        if self.execution is not None:
            self._disk = concurrent.futures.ThreadPoolExecutor(DISK_THREADS, "sim-outbox")
            for agent in self.agents:
                agent.attach_commands(self._command_path(agent.env))
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._helpers = [
            self._tasks.create_task(self._setup.pinger.run(), name="sim-keepalive"),
            self._tasks.create_task(self._setup.beats.run(), name="sim-heartbeats"),
            self._tasks.create_task(self._report(), name="sim-report"),
        ]
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._tasks is not None
        try:
            await self.stop()
        finally:
            if self._disk is not None:
                self._disk.shutdown(wait=True)
                self._disk = None
            for agent in self.agents:
                agent.detach_commands()
            for helper in self._helpers:
                helper.cancel()
            await self._tasks.__aexit__(*exc_info)
            self._tasks = None

    async def start(self) -> None:
        """Connect every agent not yet started, at most ``connect_rate`` a second, and
        return once each has had its first online message acknowledged (or was killed or
        stopped before)."""
        if self._tasks is None:
            raise RuntimeError("enter the fleet (async with Fleet(...)) before start()")
        for agent in self.agents:
            agent.launch(self._tasks)
        await self._all_settled.wait()

    def restart(self, index: int) -> SimulatedAgent:
        """Start the stopped or killed agent ``agents[index]`` again: a new agent of the
        same id whose connections continue the old one's ``bdseq``; it connects at once
        if the fleet has started, else with :meth:`start`."""
        old = self.agents[index]
        if old.task is not None and not old.task.done():
            raise RuntimeError(f"{old.env} is still running: stop or kill it first")
        old.detach_commands()
        agent = SimulatedAgent(self, old.env, last_bdseq=old.bdseq)
        if self.execution is not None and self._disk is not None:
            agent.attach_commands(self._command_path(agent.env))
        self.agents[index] = agent
        self._unsettled += 1
        self._all_settled.clear()
        if self._tasks is not None:
            agent.launch(self._tasks)
        return agent

    async def stop(self) -> None:
        """Stop every agent still running cleanly (offline/shutdown, then DISCONNECT)."""
        running: set[asyncio.Task[None]] = set()
        for agent in self.agents:
            agent.request_stop()
            if agent.task is not None and not agent.task.done():
                running.add(agent.task)
        if running:
            await asyncio.wait(running)

    def _command_path(self, env: str) -> CommandPath:
        # Imported here: a fleet without execution does not load the executor.
        from edgeplane.edge_agent.simulator.command_path import CommandPath

        if self.execution is None or self._disk is None:
            raise RuntimeError("a command path needs execution settings and an entered fleet")
        state_dir = self.execution.state_root / env
        return CommandPath(
            env,
            state_dir,
            self.root.events(env),
            self._disk,
            self.event_delivered,
            command_keys=self.execution.command_keys,
        )

    # the agents' host (simulator.host.AgentHost) ------------------------------------------
    @property
    def setup(self) -> AgentSetup:
        return self._setup

    def connect_delay(self) -> float:
        return self._pacer.reserve(asyncio.get_running_loop().time())

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        if self._tasks is not None:
            self._tasks.create_task(work, name=name)
        else:
            work.close()

    def agent_online(self) -> None:
        self._online += 1
        self.stats.connections += 1

    def agent_offline(self) -> None:
        self._online -= 1

    def agent_settled(self) -> None:
        self._unsettled -= 1
        if self._unsettled == 0:
            self._all_settled.set()

    def connection_failed(self, env: str, error: WireError) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(error)
        log.debug("connection failed", env=env, error=str(error))

    def heartbeat_sent(self, env: str, seq: int) -> None:
        if self.on_heartbeat is not None:
            self.on_heartbeat(env, seq, time.monotonic())

    def heartbeat_done(self, error: WireError | None) -> None:
        if error is None:
            self.stats.heartbeats += 1
        elif not isinstance(error, ConnectionClosed):  # a lost connection is reported once
            self.stats.refused += 1
            self.stats.last_error = str(error)

    def event_delivered(self) -> None:
        self.stats.events += 1

    async def _report(self) -> None:
        """Progress while connecting, and failures when they happen, every few seconds."""
        reported = 0
        while True:
            await asyncio.sleep(REPORT_EVERY)
            failures = self.stats.failures + self.stats.refused - reported
            if failures:
                reported = self.stats.failures + self.stats.refused
                log.warning(
                    "connections failing",
                    failures=failures,
                    seconds=REPORT_EVERY,
                    online=self.online,
                    count=len(self.agents),
                    last_error=self.stats.last_error,
                )
            elif self._unsettled:
                log.info("connecting", online=self.online, count=len(self.agents))


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to the hard limit; return the limit.

    One agent is one socket: a fleet of thousands needs more than the usual soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft
    return target
