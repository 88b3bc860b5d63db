"""``env diagnose`` in the daemon: the facts gathered, the signed ping sent and its answer
awaited; the decisions are :mod:`controller.core.diagnosis`'s.

:class:`PongWaiters` matches the agent's answers to pings by command id (events carry
``cmd``): the event intake feeds every event in, a request worker awaits its own. It is
bounded and each waiter is removed when its wait ends, answered or not. An agent that
refuses a command it cannot authenticate answers ``rejected`` without the command's id
(it does not trust it): such a rejection from the environment being pinged answers that
ping. :class:`LastMetrics` keeps the figures of each environment's last heartbeat.

A diagnosis runs in a request worker (off the receive path): a pending ping holds that
worker only, never the intake nor the other workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from edgeplane.controller.core.diagnosis import (
    THRESHOLDS,
    DeployedWorkflow,
    DiagnosisFacts,
    Metrics,
    PingOutcome,
    Thresholds,
    diagnose,
)
from edgeplane.controller.core.heartbeats import WINDOW_INTERVALS
from edgeplane.controller.core.operations import Operations, new_id
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.daemon.publisher import Publisher
from edgeplane.shared.checkup import Report
from edgeplane.shared.clock import Clock
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import CommandRejected, Event, OnlineStatus, Ping, Pong
from edgeplane.shared.rpc import EnvDiagnose, EnvInfo

__all__ = ["PENDING_PINGS", "Diagnoser", "LastMetrics", "PongWaiters"]

PENDING_PINGS: Final = 64  # diagnoses waiting for their ping's answer at once
DEPLOYED_STATES: Final = ("running", "accepted", "sent", "restarting")

log: Final = structlog.get_logger("controller")


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer to a ping, and when it came (monotonic seconds)."""

    event: Event
    at: float


class PongWaiters:
    def __init__(self, clock: Clock, limit: int = PENDING_PINGS) -> None:
        self._clock = clock
        self._limit = limit
        self._waiting: dict[str, tuple[str, asyncio.Future[Answer]]] = {}  # cmd -> env, answer

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, env: str, cmd: str) -> asyncio.Future[Answer]:
        """A future for the answer to ping ``cmd`` sent to ``env``; refused when too many
        wait already."""
        if len(self._waiting) >= self._limit:
            raise RequestRefused("unavailable", "too many diagnoses under way; try again soon")
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[cmd] = (env, answer)
        return answer

    def forget(self, cmd: str) -> None:
        self._waiting.pop(cmd, None)

    def deliver(self, event: Event) -> None:
        """Feed one event in (never waits, never raises)."""
        if not self._waiting:
            return
        if event.cmd:
            waiting = self._waiting.get(event.cmd)
            if waiting is not None and waiting[0] == event.env:
                self._answer(event.cmd, event)
            return
        if isinstance(event, CommandRejected):  # an unauthenticated command's refusal
            for cmd, (env, _) in list(self._waiting.items()):
                if env == event.env:
                    self._answer(cmd, event)

    def _answer(self, cmd: str, event: Event) -> None:
        _, answer = self._waiting.pop(cmd)
        if not answer.done():
            answer.set_result(Answer(event, self._clock.monotonic()))


class LastMetrics:
    """The cpu, mem and disk of each environment's last heartbeat."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metrics] = {}
        self._refused: dict[str, tuple[int, str]] = {}  # of each latest connection

    def note(self, status: OnlineStatus) -> None:
        self._metrics[status.env] = Metrics(status.cpu, status.mem, status.disk)
        if status.seq == 0:  # a connection's first heartbeat says how its logins went
            self._refused[status.env] = (status.refused, status.refused_reason)

    def get(self, env: str) -> Metrics | None:
        return self._metrics.get(env)

    def refused(self, env: str) -> tuple[int, str] | None:
        """The logins refused before ``env``'s latest connection, and why (None: unknown)."""
        return self._refused.get(env)

    def forget(self, env: str) -> None:
        self._metrics.pop(env, None)
        self._refused.pop(env, None)


class Diagnoser:
    def __init__(
        self,
        operations: Operations,
        presence: Presence,
        publisher: Publisher,
        clock: Clock,
        *,
        waiters: PongWaiters,
        metrics: LastMetrics,
        key_of: Callable[[str], str] | None = None,
        rotate_after: float | None = None,
        thresholds: Thresholds = THRESHOLDS,
    ) -> None:
        self._ops = operations
        self._presence = presence
        self._publisher = publisher
        self._clock = clock
        self._waiters = waiters
        self._metrics = metrics
        self._key_of = key_of  # the id of the key that signs env's commands
        self._rotate_after = rotate_after
        self._thresholds = thresholds

    async def diagnose(self, request: EnvDiagnose, info: EnvInfo) -> Report:
        """The report on ``info``'s environment (``info`` with its credential); a retired
        one is refused (``retired``)."""
        env, limit = info.id, request.timeout
        if info.retired is not None:
            raise RequestRefused("retired", f"environment {env!r} is retired: nothing to diagnose")
        now = self._clock.time()  # before the ping's wait: the heartbeat's age is now's
        ping = await self._ping(info, limit)
        presence = self._presence.get(env)
        refused = self._metrics.refused(env)
        facts = DiagnosisFacts(
            info=info,
            ping=ping,
            now=now,
            limit=limit,
            reason="" if presence is None else presence.reason,
            metrics=self._metrics.get(env),
            link_missed=self._link_missed(env),
            link_hour=self._link_hour(env),
            refused=None if refused is None else refused[0],
            refused_reason="" if refused is None else refused[1],
            link_window=WINDOW_INTERVALS * (info.interval or 0.0),
            deployed=self._deployed(env),
            rotate_after=self._rotate_after,
            key_id="" if self._key_of is None else self._key_of(env),
            thresholds=self._thresholds,
        )
        return diagnose(facts)

    def forget(self, env: str) -> None:
        """``env`` is forgotten: its figures go too."""
        self._metrics.forget(env)

    def _link_missed(self, env: str) -> int | None:
        """Heartbeats missed in the last intervals: what the link check judges by."""
        return self._presence.missed_heartbeats(env)

    def _link_hour(self, env: str) -> tuple[float, int] | None:
        """The link quality over the last hour, as the view shows it."""
        figures = self._presence.link_figures(env)
        return None if figures is None else (figures.missed_pct, figures.reconnects)

    def _deployed(self, env: str) -> tuple[DeployedWorkflow, ...]:
        return tuple(
            DeployedWorkflow(d.id, d.state, d.workflow)
            for d in self._ops.book.in_state(env, *DEPLOYED_STATES)
            if not d.dry_run
        )

    async def _ping(self, info: EnvInfo, limit: float) -> PingOutcome:
        if not info.registered:
            return PingOutcome("not-sent", detail="the environment has no record: the "
                               "controller sends it no commands")  # fmt: skip
        if info.status != "online":
            return PingOutcome("not-sent", detail=f"the environment is {info.status}")
        ping = Ping(id=new_id("c"), expires=self._clock.time() + limit)
        answer = self._waiters.expect(info.id, ping.id)
        sent = self._clock.monotonic()
        try:
            async with asyncio.timeout(limit):
                await self._publisher.send(self._ops.command(info.id, ping))
                got = await answer
        except TimeoutError:
            log.info("diagnosis ping unanswered", env=info.id, cmd=ping.id, limit=limit)
            return PingOutcome("none", round_trip=self._clock.monotonic() - sent)
        finally:
            self._waiters.forget(ping.id)
        round_trip = max(0.0, got.at - sent)
        if isinstance(got.event, Pong):
            return PingOutcome("pong", round_trip, processes=tuple(got.event.processes),
                               executor=got.event.executor)  # fmt: skip
        detail = str(getattr(got.event, "reason", "")) or str(got.event.__struct_config__.tag)
        return PingOutcome("rejected", round_trip, detail=detail)
