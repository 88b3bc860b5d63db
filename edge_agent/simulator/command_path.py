"""A simulated agent's real command path: the agent's own outbox (its event sink and memory
of command ids), executor (preflight, steps as subprocesses) and command handler, and the
pump that publishes the outbox's events in ``seq`` order as the agent does: at most
:data:`EVENT_WINDOW` awaiting their PUBACK, each deleted once acknowledged (off the event
loop), the rest sent again after a reconnect. Only the MQTT connection is the simulator's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import structlog

from edgeplane.edge_agent.commands import CommandHandler
from edgeplane.edge_agent.errors import OutboxError
from edgeplane.edge_agent.execution.executor import Executor
from edgeplane.edge_agent.outbox import Outbox
from edgeplane.edge_agent.simulator.wire.client import MqttClient
from edgeplane.edge_agent.simulator.wire.errors import WireError
from edgeplane.shared.clock import SystemClock

__all__ = ["EVENT_WINDOW", "CommandPath"]

log = structlog.get_logger("edgeplane.edge_agent.simulator.command_path")

EVENT_WINDOW: Final = 4  # outbox events awaiting PUBACK at once, per agent (heartbeats too)
WINDOW_RETRY: Final = 0.05  # seconds before trying again when the in-flight window is full


class CommandPath:
    """One agent's command path, its state in ``state_dir``; made in the fleet's event loop.

    ``disk`` runs the deletions of acknowledged events (a synchronous SQLite commit each: a
    real agent waits for its own disk, the fleet's loop must not wait for all of them);
    ``on_delivered`` is called for every event acknowledged.
    """

    def __init__(
        self,
        env: str,
        state_dir: Path,
        events_topic: str,
        disk: concurrent.futures.Executor,
        on_delivered: Callable[[], None],
        *,
        command_keys: Sequence[bytes] = (),
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        self._events_topic = events_topic
        self._disk: concurrent.futures.Executor | None = disk
        self._on_delivered = on_delivered
        clock = SystemClock()
        self.outbox = Outbox(state_dir, env, clock=clock, on_emit=self._wake)
        self.executor = Executor(
            env,
            state_dir=state_dir,
            models_dir=None,
            secrets=None,
            endpoints={},
            sink=self.outbox,
            clock=clock,
        )
        self.handler = CommandHandler(
            env,
            clock,
            self.outbox,
            commands=self.outbox,
            command_keys=command_keys,
            executor=self.executor,
        )
        self.executor.start()
        self._client: MqttClient | None = None  # while the agent is online
        self._connection = 0  # events acknowledged on an older connection count for nothing
        self._sent_up_to = 0  # the newest seq published on this connection
        self._in_flight = 0
        self._flush_due = False
        self._acknowledged: list[int] = []  # PUBACKed, to delete in one transaction

    def handle(self, payload: bytes) -> None:
        """A command arrived; its events reach the outbox, and from there the broker."""
        self.handler.handle(payload)

    def connected(self, client: MqttClient) -> None:
        """The agent is online on ``client``: everything unacknowledged goes out again,
        oldest first."""
        self._client = client
        self._connection += 1
        self._sent_up_to = 0
        self._in_flight = 0
        self._send_events()

    def disconnected(self) -> None:
        self._client = None  # the rest is sent after the next online

    def close(self) -> None:
        """Stop the executor and close the outbox; deletions not yet begun are dropped (the
        events stay in the outbox: no loss)."""
        self._disk = None
        self._client = None
        self.executor.close()
        self.outbox.close()

    def _wake(self) -> None:
        """The outbox has a new event (emitted on any thread): publish it from the loop."""
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon_threadsafe(self._send_events)

    def _send_events(self) -> None:
        """Publish outbox events not yet sent on this connection, oldest first, at most
        :data:`EVENT_WINDOW` awaiting their PUBACK (as the agent does)."""
        self._flush_due = False
        client, outbox = self._client, self.outbox
        if client is None or client.is_closed:
            return  # sent after the next online
        while self._in_flight < EVENT_WINDOW and outbox.last_seq > self._sent_up_to:
            batch = outbox.pending(self._sent_up_to, EVENT_WINDOW - self._in_flight)
            if not batch:
                self._sent_up_to = outbox.last_seq
                return
            for seq, payload in batch:
                done = functools.partial(self._event_done, self._connection, seq)
                try:
                    client.publish_nowait(self._events_topic, payload, qos=1, on_done=done)
                except WireError:  # the in-flight window is full (heartbeats): soon again
                    self._loop.call_later(WINDOW_RETRY, self._send_events)
                    return
                self._sent_up_to = seq
                self._in_flight += 1

    def _event_done(self, connection: int, seq: int, error: WireError | None) -> None:
        if connection != self._connection:
            return
        self._in_flight -= 1
        if error is None:
            self._forget(seq)
            self._on_delivered()
        self._send_events()

    def _forget(self, seq: int) -> None:
        """Delete an acknowledged event from the outbox, off the loop; the events
        acknowledged within one turn of the loop in one transaction, as the agent does."""
        if not self._acknowledged:
            self._loop.call_soon(self._forget_acknowledged)
        self._acknowledged.append(seq)

    def _forget_acknowledged(self) -> None:
        seqs, self._acknowledged = self._acknowledged, []
        if self._disk is not None and seqs:
            self._disk.submit(_delete, self.outbox, seqs)


def _delete(outbox: Outbox, seqs: list[int]) -> None:
    try:
        outbox.acked(*seqs)
    except OutboxError as exc:  # it stays in the outbox and goes out again: no loss
        log.warning("acknowledged event not deleted", env=outbox.env, error=str(exc))
