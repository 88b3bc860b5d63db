"""The controller's presence service: the thin shell around the pure core.

:meth:`PresenceService.run` opens the store, restores the core and the operations from it,
assembles the parts (each with one job) and keeps two connections until ``stop``, each
through the one reconnect loop (:class:`controller.reconnect.Reconnect`, capped and jittered):

- :mod:`~edgeplane.controller.daemon.intake` decodes and judges every message;
- :mod:`~edgeplane.controller.daemon.publisher` stores, then publishes what was judged;
- :mod:`~edgeplane.controller.daemon.sync` tells when the broker's retained state is all
  here, and which views to re-publish;
- :mod:`~edgeplane.controller.daemon.request_desk` takes operator requests off the
  receive path, :mod:`~edgeplane.controller.daemon.requests` answers them;
- :mod:`~edgeplane.controller.daemon.beacon` is the controller's own retained status;
- :mod:`~edgeplane.controller.daemon.rivals` makes sure, before anything, that no other
  controller is alive on the broker and topic root (the beacon watches for one after);
- :mod:`~edgeplane.controller.daemon.links` runs the work on each connection: the presence
  connection, and the events connection with its persistent session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import astuple
from pathlib import Path
from typing import Final

import structlog

from edgeplane.controller.core.badinput import BadInput
from edgeplane.controller.core.diagnosis import Thresholds
from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.incidents import IncidentBook
from edgeplane.controller.core.notices import RetryPolicy
from edgeplane.controller.core.operations import CONTROLLER_SRC, Operations, new_id
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.core.pressure import PressureWatch
from edgeplane.controller.core.records import Writes
from edgeplane.controller.core.retention import Retention
from edgeplane.controller.core.rotation import Rotations
from edgeplane.controller.core.views import ViewGuard
from edgeplane.controller.daemon.beacon import StatusBeacon
from edgeplane.controller.daemon.broker_admin import BrokerAdmin
from edgeplane.controller.daemon.command_keys import CommandKeys, KeyRotator, open_command_keys
from edgeplane.controller.daemon.diagnose_desk import Diagnoser, LastMetrics, PongWaiters
from edgeplane.controller.daemon.identities import Identities
from edgeplane.controller.daemon.incident_desk import IncidentDesk
from edgeplane.controller.daemon.intake import Intake
from edgeplane.controller.daemon.links import DaemonParts, EventLink, PresenceLink
from edgeplane.controller.daemon.notifier import Notifier
from edgeplane.controller.daemon.publisher import Publisher
from edgeplane.controller.daemon.request_desk import RequestDesk
from edgeplane.controller.daemon.requests import RequestHandler
from edgeplane.controller.daemon.retention import Pruner
from edgeplane.controller.daemon.rivals import find_rival, last_boot, remember_boot, rival_text
from edgeplane.controller.daemon.rollout_desk import RolloutDesk
from edgeplane.controller.daemon.rotation import CredentialRotator
from edgeplane.controller.daemon.rotation_desk import RotationDesk
from edgeplane.controller.daemon.settings import ControllerSettings
from edgeplane.controller.daemon.store import Store, open_store
from edgeplane.controller.daemon.sync import RetainedSync
from edgeplane.controller.errors import AnotherController
from edgeplane.controller.reconnect import Reconnect, Retry
from edgeplane.controller.tasks import cancel_and_wait
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.command_signature import CommandSigner
from edgeplane.shared.messages import Credentials
from edgeplane.shared.notices import IncidentNotice

__all__ = ["PresenceService"]

log: Final = structlog.get_logger("controller")


class PresenceService:
    """``await PresenceService(settings).run(stop)`` runs until ``stop`` is set."""

    def __init__(self, settings: ControllerSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self._clock = clock or SystemClock()
        self.started = self._clock.time()
        self.core = Presence(
            self._clock,
            FlapDetector(settings.flap_window, settings.flap_high, settings.flap_low),
            IdentityWatch(settings.identity_window, settings.identity_quiet),
            PressureWatch(settings.thresholds),
        )
        self.bad = BadInput(self._clock)

    async def run(self, stop: asyncio.Event) -> None:
        """Raises :class:`AnotherController` when another controller is active on the
        broker and topic root (found before we start, or started at the same moment)."""
        settings = self.settings
        async with open_store(settings.db_path) as store:
            keys = await self._command_keys(store)  # a bad key file is refused first
            dead_birth = await find_rival(settings, last_boot(settings), stop)
            if stop.is_set():
                return
            signer = keys.current
            parts = await self._assemble(store, keys)
            parts.beacon.settle(dead_birth)
            parts.beacon.on_give_way = stop.set
            await asyncio.to_thread(remember_boot, settings, parts.beacon.boot)
            log.info(
                "controller starting",
                db=str(settings.db_path),
                broker=str(settings.broker),
                topic_root=str(settings.topic_root),
                restored=len(self.core),
                records=len(parts.operations.registry),
                deployments=len(parts.operations.book),
                boot=parts.beacon.boot,
                command_key=signer.public_key_b64,
                command_key_id=signer.key_id,
                command_key_file=str(settings.command_key_path or "(in memory)"),
                command_key_ids=keys.key_ids,
                command_key_rotation=keys.state,
            )
            log.info(
                "agents run only commands signed by this controller: give each agent "
                f"command_key = {signer.public_key_b64!r} in its settings file "
                f"(or --command-key {signer.public_key_b64})",
            )
            async with self._notifier(parts), asyncio.TaskGroup() as tasks:
                pruner = self._pruner(store)
                tasks.create_task(_keep_events(EventLink(parts), stop), name="events")
                retention = tasks.create_task(pruner.run(), name="retention")
                await _keep_presence(PresenceLink(parts), stop)
                await cancel_and_wait(retention)
            await store.flush()
        log.info("controller stopped", **parts.beacon.counters())
        if parts.beacon.gave_way_to is not None:
            raise AnotherController(rival_text(settings, parts.beacon.gave_way_to, "started first"))

    def _notifier(self, parts: DaemonParts) -> contextlib.AbstractAsyncContextManager[object]:
        """The webhook, fed every incident edge once stored; nothing without ``--notify-url``."""
        url = self.settings.notify_url
        if url is None:
            return contextlib.nullcontext(None)
        policy = RetryPolicy(max_tries=self.settings.notify_tries)
        notifier = Notifier(url, timeout=self.settings.notify_timeout, policy=policy)
        if parts.incidents is not None:

            def notify(notice: IncidentNotice) -> None:
                if notice.edge != "repeated":  # one body per edge of an episode, not a stream
                    notifier.notify(notice)

            parts.incidents.sinks.append(notify)
        parts.beacon.notify_counts = lambda: astuple(notifier.counts)
        return notifier

    def _pruner(self, store: Store) -> Pruner:
        settings = self.settings
        retention = Retention(settings.retention, settings.retention_per_env, settings.flap_window)
        return Pruner(store, retention, self._clock, every=settings.retention_every)

    async def _command_keys(self, store: Store) -> CommandKeys:
        """The command keys as the key files and the stored rotation left them."""
        rotation, agents = await store.key_rotation()
        keys, step = open_command_keys(
            self.settings.command_key_path, rotation, agents, self._clock
        )
        if step:
            writes = Writes(key_rotation=[] if step.rotation is None else [step.rotation],
                            key_agents=step.agents, urgent=True)  # fmt: skip
            await store.wait_committed(await store.submit(writes))
        return keys

    async def _assemble(self, store: Store, keys: CommandKeys) -> DaemonParts:
        """The core and the operations as the store left them, and the parts around them;
        the default cloud environment, made sure of."""
        settings, clock, core = self.settings, self._clock, self.core
        records, recent = await store.load(transitions_since=clock.time() - settings.flap_window)
        core.restore(records, recent, await store.open_pressure())
        operations = Operations(
            settings.topic_root,
            clock,
            core,
            command_ttl=settings.command_ttl,
            records=await store.records(),
            inventories=await store.inventories(),
            deployments=await store.open_deployments(),
            issued=await store.issued_deployments(),
            commands=await store.open_commands(),
            seen=await store.stream_heads(),
            controller_seq=await store.last_seq(CONTROLLER_SRC),
            validation_max_age=settings.validation_max_age,
            dry_runs=await store.dry_runs(),
        )
        root = settings.topic_root
        beacon = StatusBeacon(root, core, self.bad, operations, self.started, keys, clock)
        keys.announce = beacon.announcement
        rotator = KeyRotator(keys, root, clock, operations, core, settings.command_ttl)
        sync = RetainedSync(root, beacon.boot, settings.max_payload)
        publisher = Publisher(root, store, operations, sync, keys)
        views = ViewGuard(clock)
        identities = self._identities(keys.current.public_key_b64)
        rotation = await self._rotation(store, operations, publisher, sync, identities)
        waiters, metrics = PongWaiters(clock), LastMetrics()
        intake = Intake(
            settings.topic_root,
            core,
            operations,
            sync,
            self.bad,
            views,
            max_payload=settings.max_payload,
            keys=rotator,
            on_online=None if rotation is None else rotation.offer,
            on_heartbeat=metrics.note,
            on_answer=waiters.deliver,
        )
        diagnoser = Diagnoser(
            operations,
            core,
            publisher,
            clock,
            waiters=waiters,
            metrics=metrics,
            key_of=lambda env: keys.signer_for(env).key_id,
            rotate_after=settings.rotate_after,
            thresholds=Thresholds(
                cpu=settings.cpu_threshold,
                mem=settings.memory_threshold,
                disk=settings.disk_threshold,
            ),
        )

        def enrol_with(signer: CommandSigner) -> None:
            identities.command_key = signer.public_key_b64  # new bootstrap files: the new key

        keys.on_new_current = enrol_with
        rollouts = RolloutDesk(operations, store, publisher, clock, sync.synced)
        await rollouts.restore()
        publisher.watchers.append(rollouts.note)
        book = IncidentBook(clock, await store.open_incidents())
        incidents = IncidentDesk(root, clock, book, store, core)
        publisher.incidents = incidents
        operations.open_incidents = book.open_count
        if rotation is not None:

            async def credential_problem(env: str, why: str) -> int:
                return await publisher.carry_out(None, incidents.credential_problem(env, why))

            rotation.on_failure = credential_problem
        handler = RequestHandler(
            operations,
            store,
            max_payload=settings.max_payload,
            identities=identities,
            keys=rotator,
            rotation=rotation,
            views=views,
            rollouts=rollouts,
            diagnoser=diagnoser,
            incidents=incidents,
        )
        desk = RequestDesk(root, handler, publisher, sync.synced, intake.drop, beacon.identity)
        await publisher.carry_out(None, operations.ensure_default())
        return DaemonParts(
            settings,
            clock,
            store,
            core,
            operations,
            intake,
            sync,
            publisher,
            desk,
            beacon,
            views,
            identities if identities.enabled else None,
            rotation,
            rollouts,
            incidents,
        )

    async def _rotation(
        self,
        store: Store,
        ops: Operations,
        publisher: Publisher,
        sync: RetainedSync,
        identities: Identities,
    ) -> RotationDesk | None:
        """Credential rotation as the store left it; None on a broker without identities."""
        if not identities.enabled:
            return None
        active = {record.id for record in ops.registry if record.active}
        stored = [c for c in await store.credentials() if c.env in active]
        ids = (new_id("c") for _ in itertools.count())
        rotations = Rotations(self.settings.rotate_after, ids, stored)

        async def send(env: str, command: Credentials) -> None:
            await publisher.send(ops.command(env, command))

        def online_bdseq(env: str) -> int | None:
            presence = self.core.get(env)
            return presence.bdseq if presence is not None and presence.status == "online" else None

        def enrolled(env: str) -> float:
            record = ops.registry.get(env)
            return record.created if record is not None else self._clock.time()

        rotator = CredentialRotator(
            rotations,
            identities.env_clients(),
            store,
            self._clock,
            send=send,
            online_bdseq=online_bdseq,
            enrolled=enrolled,
        )
        return RotationDesk(rotator, ops, self._clock, sync.synced)

    def _identities(self, command_key: str) -> Identities:
        """The broker's identities, administered when the controller logs in with a user
        name (``broker init``); a broker without identities otherwise."""
        identity = self.settings.broker.identity
        if identity is None or identity.username is None:
            return Identities(None, self.settings.topic_root, self.core)
        return Identities(
            BrokerAdmin(),
            self.settings.topic_root,
            self.core,
            ca_pem=_ca_pem(identity.ca_pem, identity.ca_file),
            lockout_grace=self.settings.lockout_grace,
            command_key=command_key,
            clock=self._clock,
            rotate_after=self.settings.rotate_after,
        )


def _ca_pem(inline: str | None, path: Path | None) -> str:
    """The CA the controller trusts for the broker, as PEM, for the enrollment files (a CA
    certificate is public); "" when it trusts the system's store."""
    if inline:
        return inline
    if path is None:
        return ""
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning(
            "cannot read the CA file for enrollment files", ca_file=str(path), error=str(exc)
        )
        return ""


async def _keep_presence(link: PresenceLink, stop: asyncio.Event) -> None:
    def lost(retry: Retry) -> None:
        log.warning(
            "broker connection lost; retrying",
            broker=str(link.broker_url),
            error=str(retry.error),
            retry_in=round(retry.delay, 2),
        )

    reconnect = Reconnect(stop=stop, on_retry=lost)
    await reconnect.run(link.connection, lambda connection: link.session(connection, stop))


async def _keep_events(link: EventLink, stop: asyncio.Event) -> None:
    def lost(retry: Retry) -> None:
        log.debug("event connection lost; retrying", error=str(retry.error))

    reconnect = Reconnect(stop=stop, on_retry=lost)
    await reconnect.run(link.connection, lambda connection: link.session(connection, stop))
