"""Operator requests: one :data:`shared.rpc.Request` in, one :class:`shared.rpc.Reply` out.

The service hands over each request's payload; :meth:`RequestHandler.handle` decodes it,
does what it asks (changes through :class:`controller.core.operations.Operations`, which says
what to store and publish; reads from memory or straight from the database) and returns
the reply with the effects. A bad payload is a failed reply with code ``invalid`` naming
the field; a refusal carries its code and one sentence; a database failure is
``unavailable``. Nothing here raises.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import structlog

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.operations import Effects, Operations
from edgeplane.controller.core.presence import Transition
from edgeplane.controller.core.views import ViewGuard
from edgeplane.controller.daemon.command_keys import KeyRotator
from edgeplane.controller.daemon.diagnose_desk import Diagnoser
from edgeplane.controller.daemon.identities import NO_IDENTITIES, Identities
from edgeplane.controller.daemon.incident_desk import IncidentDesk, incident_info
from edgeplane.controller.daemon.rollout_desk import RolloutDesk
from edgeplane.controller.daemon.rotation_desk import RotationDesk, with_credential
from edgeplane.controller.daemon.store import Store
from edgeplane.controller.errors import RequestRefused, StoreError
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.rpc import (
    MAX_REPLY,
    REQUEST,
    CommandKeyRequest,
    DeploymentCancel,
    DeploymentList,
    DeploymentShow,
    DeployRequest,
    EnvCreate,
    EnvDiagnose,
    EnvForget,
    EnvInfo,
    EnvList,
    EnvRestart,
    EnvRetire,
    EnvRotateCredentials,
    EnvShow,
    EnvTimeline,
    EnvUpdate,
    ErrorCode,
    EventList,
    IncidentAck,
    IncidentList,
    IncidentResolve,
    IncidentShow,
    IncidentSummary,
    LoggedEvent,
    OperatorAdd,
    OperatorList,
    OperatorRemove,
    OperatorRotate,
    OperatorRotateConfirm,
    Reply,
    Request,
    RolloutAction,
    RolloutList,
    RolloutShow,
    RolloutStart,
    TimelineEntry,
    UndeployRequest,
)

__all__ = ["RequestHandler", "failed"]

ERROR_LIMIT: Final = 2048
SHOW_EVENTS: Final = 1000  # events in a deployment-show

_READS: Final = (
    EnvDiagnose,
    EnvList,
    EnvShow,
    DeploymentList,
    DeploymentShow,
    EventList,
    OperatorList,
    RolloutList,
    RolloutShow,
    IncidentList,
    IncidentShow,
    EnvTimeline,
)

log = structlog.get_logger("edgeplane.controller.daemon.requests")
_encoder: Final = msgspec.json.Encoder()


def failed(code: ErrorCode, error: str) -> Reply:
    if len(error) > ERROR_LIMIT:
        error = error[: ERROR_LIMIT - 3] + "..."
    return Reply(ok=False, code=code, error=error)


class RequestHandler:
    def __init__(
        self,
        operations: Operations,
        store: Store,
        *,
        max_payload: int,
        identities: Identities | None = None,
        keys: KeyRotator | None = None,
        rotation: RotationDesk | None = None,
        views: ViewGuard | None = None,
        rollouts: RolloutDesk | None = None,
        diagnoser: Diagnoser | None = None,
        incidents: IncidentDesk | None = None,
    ) -> None:
        self._ops = operations
        self._incidents = incidents
        self._diagnoser = diagnoser
        self._rollouts = rollouts
        self._views = views
        self._keys = keys
        self._store = store
        self._max_payload = max_payload
        self._ids = identities
        self._rotation = rotation

    async def handle(self, payload: bytes, response_topic: str = "") -> tuple[Reply, Effects]:
        try:
            request = REQUEST.decode(payload, limit=self._max_payload)
        except DecodeError as exc:
            return failed("invalid", f"bad request ({exc.reason}): {exc.detail}"), Effects()
        try:
            requester = self._ids.requester(response_topic) if self._ids else ""
            result, effects = await self._dispatch(request, requester)
        except RequestRefused as exc:
            log.info("request refused", op=_op(request), code=exc.code, error=exc.message)
            return failed(exc.code, exc.message), Effects()
        except StoreError as exc:
            log.error("request failed", op=_op(request), error=str(exc))
            return failed("unavailable", f"the controller cannot do it now: {exc}"), Effects()
        except Exception as exc:  # a bug must cost one request, not the controller
            log.exception("request crashed", op=_op(request))
            return failed("unavailable", f"the controller failed on this request: {exc}"), Effects()
        if isinstance(request, _READS):
            log.debug("request done", op=_op(request))
        else:
            log.info("request done", op=_op(request))
        encoded = _encoder.encode(result)
        if len(encoded) > MAX_REPLY:
            why = f"the answer ({len(encoded)} bytes) is over the {MAX_REPLY}-byte reply limit"
            return failed("too-large", f"{why}; ask for fewer (limit)"), effects
        return Reply(ok=True, result=msgspec.Raw(encoded)), effects

    async def _dispatch(self, request: Request, requester: str) -> tuple[Any, Effects]:
        ops, ids = self._ops, self._identities
        match request:
            case EnvCreate(seal_to=seal_to) if seal_to:
                return await ids().create_env(request, ops)
            case EnvCreate():
                if self._ids is not None and self._ids.enabled:
                    await self._ids.check_env_name(ops.planned_id(request))
                return ops.create(request)
            case EnvList(project=project, include_retired=include_retired):
                infos = ops.env_list(project, include_retired)
                page = [info for info in infos if info.id > request.after][: request.limit]
                return [self._credential(info) for info in page], Effects()
            case EnvShow(id=env):
                return self._with_incidents(self._credential(ops.env_info(env))), Effects()
            case EnvDiagnose(id=env):
                if self._diagnoser is None:
                    raise RequestRefused("unavailable", "this controller cannot diagnose")
                info = self._with_incidents(self._credential(ops.env_info(env)))
                return await self._diagnoser.diagnose(request, info), Effects()
            case EnvUpdate():
                return ops.update(request)
            case EnvRestart():
                return ops.restart(request)
            case EnvRetire(id=env):
                retired = ops.retire(request)
                if self._ids is not None:
                    await self._ids.lock_out(env)
                if self._rotation is not None:
                    self._rotation.forget(env)
                return retired
            case EnvForget(id=env):
                forgotten = ops.forget(request)
                if self._views is not None:
                    self._views.forget(env)
                if self._diagnoser is not None:
                    self._diagnoser.forget(env)
                log.info("environment forgotten", env=env, registered=forgotten[0].registered)
                return forgotten
            case EnvRotateCredentials(id=env, repin=repin):
                return await self._rotate(env, repin), Effects()
            case DeployRequest():
                result, effects = ops.deploy(request)
                if result.forced:
                    log.warning(
                        "deployment forced past the gate",
                        dep=result.id,
                        env=result.env,
                        forced=result.forced,
                    )
                return result, effects
            case DeploymentCancel(id=dep):
                await self._cancellable(dep)
                return ops.cancel(dep)
            case UndeployRequest(env=env, workflow=workflow):
                return ops.undeploy(env, workflow)
            case DeploymentList(env=env, limit=limit):
                deployments = await self._deployments(env, limit)
                if env and not deployments:
                    ops.require_known(env)
                return deployments, Effects()
            case DeploymentShow(id=dep):
                return await self._deployment(dep), Effects()
            case EventList(env=env, dep=dep, after=after, limit=limit):
                await self._store.flush()  # what was received so far is in the log
                events = await self._store.events(env=env, dep=dep, after=after, limit=limit)
                if env and not events and not after:
                    ops.require_known(env)  # an id nobody knows is no empty log
                unknown = dep and not events and not after and ops.book.get(dep) is None
                if unknown and await self._store.deployment(dep) is None:
                    raise RequestRefused("not-found", f"no deployment {dep!r}")
                return _fitting(events), Effects()
            case IncidentList() | IncidentShow() | IncidentAck() | IncidentResolve():
                return await self._incident_request(request, requester)
            case EnvTimeline(env=env, since=since, limit=limit):
                ops.require_known(env)
                await self._store.flush()
                return _timeline(*await self._store.timeline(env, since, limit)), Effects()
            case OperatorAdd():
                return await ids().add_operator(request, ops)
            case OperatorList():
                return await ids().operators(), Effects()
            case OperatorRemove():
                return await ids().remove_operator(request, requester), Effects()
            case OperatorRotate():
                return await ids().operator_credentials().rotate(request), Effects()
            case OperatorRotateConfirm():
                return await ids().operator_credentials().confirm(request), Effects()
            case RolloutStart():
                return self._rollout_desk().start(request)
            case RolloutList(limit=limit):
                return self._rollout_desk().list(limit), Effects()
            case RolloutShow(id=rollout):
                return self._rollout_desk().show(rollout), Effects()
            case RolloutAction(id=rollout, action=action):
                return self._rollout_desk().act(rollout, action)
            case CommandKeyRequest(action=action):
                if self._keys is None:
                    raise RequestRefused("unavailable", "this controller cannot rotate its key")
                return self._keys.request(action)
        raise RequestRefused("invalid", f"unknown request {_op(request)!r}")

    async def _incident_request(
        self, request: IncidentList | IncidentShow | IncidentAck | IncidentResolve, by: str
    ) -> tuple[Any, Effects]:
        desk = self._incident_desk()
        await self._store.flush()
        if isinstance(request, IncidentList):
            if request.env:
                self._ops.require_known(request.env)
            found = await self._store.incidents(
                env=request.env,
                since=request.since,
                open_only=request.open_only,
                kind=request.kind,
                limit=request.limit,
            )
            return [incident_info(i) for i in found], Effects()
        stored = await self._store.incident(request.id)
        if stored is None:
            raise RequestRefused("not-found", f"no incident {request.id!r}")
        if isinstance(request, IncidentShow):
            return incident_info(stored), Effects()
        act = desk.acknowledge if isinstance(request, IncidentAck) else desk.resolve
        done = act(request.id, request.note, by)
        if done is None:
            raise RequestRefused("conflict", f"incident {request.id} is resolved already")
        edge, effects = done
        return incident_info(edge.incident), effects

    def _with_incidents(self, info: EnvInfo) -> EnvInfo:
        if self._incidents is None:
            return info
        summaries = [
            IncidentSummary(
                id=i.id,
                kind=i.kind,
                severity=i.severity,
                state=i.state,
                opened=i.opened,
                count=i.count,
                detail=i.detail,
            )
            for i in self._incidents.book.open_in(info.id)
        ]
        return msgspec.structs.replace(info, open_incidents=summaries)

    def _incident_desk(self) -> IncidentDesk:
        if self._incidents is None:
            raise RequestRefused("unavailable", "this controller keeps no incidents")
        return self._incidents

    def _rollout_desk(self) -> RolloutDesk:
        if self._rollouts is None:
            raise RequestRefused("unavailable", "this controller runs no rollouts")
        return self._rollouts

    async def _rotate(self, env: str, repin: bool) -> EnvInfo:
        self._identities()
        if self._rotation is None:
            raise RequestRefused("no-identities", NO_IDENTITIES)
        self._ops.registry.require(env)
        await self._rotation.rotate(env, repin=repin)
        return self._credential(self._ops.env_info(env))

    def _credential(self, info: EnvInfo) -> EnvInfo:
        """``info`` with its broker credential, under broker init."""
        if self._rotation is None or not info.registered:
            return info
        return with_credential(info, self._rotation.rotations)

    def _identities(self) -> Identities:
        if self._ids is None or not self._ids.enabled:
            raise RequestRefused("no-identities", NO_IDENTITIES)
        return self._ids

    async def _cancellable(self, dep: str) -> None:
        """:class:`RequestRefused` for a deployment that is not in progress: unknown
        (``not-found``) or ended (``final``)."""
        if self._ops.book.get(dep) is not None:
            return
        await self._store.flush()
        deployment = await self._store.deployment(dep)
        if deployment is None:
            raise RequestRefused("not-found", f"no deployment {dep!r}")
        why = f": {deployment.reason}" if deployment.reason else ""
        raise RequestRefused(
            "final",
            f"deployment {dep} has ended already ({deployment.state}{why}): nothing to cancel",
        )

    async def _deployments(self, env: str, limit: int) -> list[Any]:
        await self._store.flush()
        return [d.info() for d in await self._store.deployments(env, limit)]

    async def _deployment(self, dep: str) -> Any:
        await self._store.flush()
        deployment = await self._store.deployment(dep)
        if deployment is None:
            raise RequestRefused("not-found", f"no deployment {dep!r}")
        # its own environment's only: another's naming it are forged (and were dropped)
        events = await self._store.events(env=deployment.env, dep=dep, limit=SHOW_EVENTS)
        return deployment.info(_fitting(events))


def _timeline(transitions: list[Transition], alerts: list[AlertEdge]) -> list[TimelineEntry]:
    entries = [
        TimelineEntry(
            entry="transition",
            env=t.env,
            at=t.at,
            from_status=t.from_status,
            to_status=t.to_status,
            reason=t.reason,
        )
        for t in transitions
    ]
    entries += [
        TimelineEntry(
            entry="alert", env=a.env, at=a.at, kind=a.kind, state=a.state, detail=a.detail[:256]
        )
        for a in alerts
    ]
    return sorted(entries, key=lambda e: e.at)


def _fitting(events: list[LoggedEvent]) -> list[LoggedEvent]:
    """The first events whose reply fits in :data:`MAX_REPLY` (each event is at most the
    largest payload, so a page always holds at least one); the rest come on the next ask."""
    budget = MAX_REPLY - 64 * 1024
    for count, entry in enumerate(events):
        budget -= len(_encoder.encode(entry))
        if budget < 0:
            return events[: max(count, 1)]
    return events


def _op(request: Request) -> str:
    return str(type(request).__struct_config__.tag)
