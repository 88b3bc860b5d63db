"""Credential rotation in the running controller (under ``broker init`` only): the
:class:`~edgeplane.controller.daemon.rotation.CredentialRotator` fed from the receive path,
asked by operators, and ticked for automatic rotation.

The receive path only :meth:`RotationDesk.offer` s an online message (never waits; only
those with a box key or of an environment in rotation are kept, in a bounded queue: a
full one drops and counts). :meth:`serve`, one task per connection, first resumes what a
restart interrupted (after the retained sync, so presence is known), then hands each
online to the rotator. :meth:`tick` rotates credentials older than ``rotate_after``.
One lock keeps the rotator's steps from interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import structlog

from edgeplane.controller.core.operations import Operations
from edgeplane.controller.core.rotation import PROOF_REFUSED, Credential, Rotations
from edgeplane.controller.daemon.rotation import CredentialRotator
from edgeplane.controller.errors import ControllerError, RequestRefused
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import OnlineStatus
from edgeplane.shared.rpc import EnvInfo

__all__ = ["KEY_MISMATCH", "ROTATION_QUEUE", "RotationDesk", "with_credential"]

KEY_MISMATCH: Final = "box-key-mismatch"  # the bad-input reason of a box key not pinned
ROTATION_QUEUE: Final = 1000  # online messages waiting for the rotator
TICK_MIN: Final = 1.0  # seconds after rotating what was due before looking again
TICK_MAX: Final = 60.0  # most seconds between looks: records come and go

log: Final = structlog.get_logger("controller")


class RotationDesk:
    def __init__(
        self,
        rotator: CredentialRotator,
        operations: Operations,
        clock: Clock,
        synced: asyncio.Event,
    ) -> None:
        self.rotator = rotator
        self._ops = operations
        self._clock = clock
        self._synced = synced
        self._queue: asyncio.Queue[OnlineStatus] = asyncio.Queue(ROTATION_QUEUE)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()  # wakes the ticker
        # Told each rotation of an environment that failed (env, why): a credential
        # problem for the operations log.
        self.on_failure: Callable[[str, str], Awaitable[object]] | None = None
        self.dropped = 0

    @property
    def rotations(self) -> Rotations:
        return self.rotator.rotations

    def offer(self, status: OnlineStatus) -> list[tuple[str, str]]:
        """An online message, from the receive path: kept when it can matter, never waits.
        Returns what in it is not taken, as (bad-input reason, why): a box key other than
        the pinned one (``box-key-mismatch``), a claimed generation without its proof
        (``bad-credential-proof``)."""
        if not status.box_key:
            credential = self.rotations.get(status.env)
            if credential is None or not credential.rotating:
                return []  # a plain heartbeat: the hot path
        try:
            self._queue.put_nowait(status)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("rotation queue full; online dropped", env=status.env, dropped=self.dropped)
        refused = []
        mismatch = self.rotations.key_mismatch(status)
        if mismatch is not None:
            refused.append((KEY_MISMATCH, mismatch))
        unproven = self.rotations.proof_refused(status)
        if unproven is not None:
            refused.append((PROOF_REFUSED, unproven))
        return refused

    async def rotate(self, env: str, *, repin: bool = False) -> Credential:
        """An operator's rotation of ``env``; a broker failure is an ``unavailable`` refusal."""
        async with self._lock:
            try:
                return await self.rotator.rotate(env, repin=repin)
            except ControllerError as exc:
                raise RequestRefused("unavailable", f"rotation of {env} failed: {exc}") from exc

    def forget(self, env: str) -> None:
        """A retired environment: its clients go with the retirement."""
        self.rotations.forget(env)

    async def serve(self) -> None:
        await self._synced.wait()
        await self._guarded(self.rotator.resume(), "resume")
        while True:
            status = await self._queue.get()
            await self._guarded(self.rotator.on_online(status), status.env, env=status.env)
            self._changed.set()

    async def tick(self) -> None:
        """Rotate every credential older than ``rotate_after`` when it comes of age."""
        if self.rotations.rotate_after is None:
            return
        await self._synced.wait()
        while True:
            due = self.rotations.next_due(self.enrolled())
            wait = TICK_MAX if due is None else due - self._clock.time()
            if wait > 0:
                await self._nap(min(wait, TICK_MAX))
                continue
            async with self._lock:
                failed = await self.rotator.rotate_due(self.enrolled())
            for env, why in failed:
                await self._failed(env, f"automatic credential rotation failed: {why}")
            await asyncio.sleep(TICK_MIN)  # a rotation that failed is not tried in a loop

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or until a credential changed (a new box key: due sooner)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        self._changed.clear()

    def enrolled(self) -> dict[str, float]:
        """Every active environment: when its record was made."""
        return {record.id: record.created for record in self._ops.registry if record.active}

    async def _guarded(self, step: Awaitable[None], what: str, env: str = "") -> None:
        async with self._lock:
            try:
                await step
            except (ControllerError, RequestRefused) as exc:
                # Each state is stored: a reconnect or a restart resumes it, or an
                # operator asks again.
                log.warning("credential rotation step failed", what=what, error=str(exc))
                failure = str(exc)
            else:
                return
        if env:
            await self._failed(env, f"credential rotation step failed: {failure}")

    async def _failed(self, env: str, why: str) -> None:
        if self.on_failure is not None:
            await self.on_failure(env, why)


def with_credential(info: EnvInfo, rotations: Rotations) -> EnvInfo:
    """``info`` with its credential's generation, age and rotation state."""
    credential = rotations.get(info.id) or Credential(info.id, since=info.created)
    return msgspec.structs.replace(
        info,
        credential_generation=credential.generation,
        credential_since=credential.since or info.created,
        rotation_state=credential.state or "",
        rotation_target=credential.target,
        rotation_started=credential.started,
        box_key_mismatch=credential.key_mismatch,
    )
