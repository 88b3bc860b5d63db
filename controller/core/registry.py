"""Environment records: who may run what, kept by the controller (pure, no I/O).

A record is created by an operator (``edgeplane env create``), is never deleted, and is
retired at the end of its life (the history stays). Every project has a default cloud
environment ``{project}-cloud``, created with the project's first record; the controller
makes sure ``default-cloud`` (project ``default``) exists when it starts, because
``edgeplane up`` runs that agent.

The :class:`Registry` only decides; the caller stores what its methods return.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from edgeplane.shared.errors import InvalidId, RequestRefused
from edgeplane.shared.ids import STAGES, derive_env_id, validate_env_id
from edgeplane.shared.rpc import EnvCreate

__all__ = [
    "DEFAULT_PROJECT",
    "Environment",
    "Registry",
    "cloud_env_id",
    "no_such_environment",
    "unknown_environment",
]

DEFAULT_PROJECT: Final = "default"


def cloud_env_id(project: str) -> str:
    """The id of a project's default cloud environment."""
    return f"{project}-cloud"


@dataclass(frozen=True, slots=True)
class Environment:
    """One environment record."""

    id: str
    project: str
    stage: str
    location: str
    purpose: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0
    retired: float | None = None

    @property
    def active(self) -> bool:
        return self.retired is None


class Registry:
    """Every environment record, by id."""

    def __init__(self, records: Iterable[Environment] = ()) -> None:
        self._records: dict[str, Environment] = {record.id: record for record in records}

    def __contains__(self, env: object) -> bool:
        return env in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Environment]:
        return iter(sorted(self._records.values(), key=lambda record: record.id))

    def get(self, env: str) -> Environment | None:
        return self._records.get(env)

    def is_registered(self, env: str) -> bool:
        """Whether ``env`` has a record that is not retired (it may get commands)."""
        record = self._records.get(env)
        return record is not None and record.active

    def projects(self) -> set[str]:
        return {record.project for record in self._records.values()}

    # --- changes: each returns the records to store ---------------------------------------
    def ensure_default(self, now: float) -> list[Environment]:
        """``default-cloud`` exists (created now when it does not)."""
        env = cloud_env_id(DEFAULT_PROJECT)
        if env in self._records:
            return []
        return [self._add(_cloud_record(DEFAULT_PROJECT, now))]

    def create(self, request: EnvCreate, now: float) -> list[Environment]:
        """The new record, preceded by its project's cloud environment when the project is
        new. Raises :class:`RequestRefused` (``invalid`` or ``exists``)."""
        return [self._add(record) for record in self.plan(request, now)]

    def plan(self, request: EnvCreate, now: float) -> list[Environment]:
        """What :meth:`create` would add, refused the same way, with nothing added."""
        record = _new_record(request, now)
        if record.id in self._records:
            existing = self._records[record.id]
            state = " (retired)" if existing.retired is not None else ""
            raise RequestRefused(
                "exists",
                f"environment {record.id!r} exists already{state}, in project "
                f"{existing.project!r}; pick another id",
            )
        created: list[Environment] = []
        cloud = cloud_env_id(record.project)
        if record.project not in self.projects() and cloud != record.id:
            if cloud in self._records:
                raise RequestRefused(
                    "exists",
                    f"project {record.project!r} would need its cloud environment {cloud!r}, "
                    "but that id is taken by another project",
                )
            created.append(_cloud_record(record.project, now))
        created.append(record)
        return created

    def update_labels(
        self, env: str, labels: Mapping[str, str], remove: Iterable[str]
    ) -> Environment:
        record = self.require(env)
        merged = {key: value for key, value in record.labels.items() if key not in set(remove)}
        merged.update(labels)
        return self._add(dataclasses.replace(record, labels=merged))

    def retire(self, env: str, now: float) -> Environment:
        """Mark ``env`` retired (retiring twice is refused: it is done already)."""
        record = self._records.get(env)
        if record is not None and record.retired is not None:
            raise RequestRefused("retired", f"environment {env!r} is retired already")
        record = self.require(env)
        return self._add(dataclasses.replace(record, retired=now))

    def require(self, env: str) -> Environment:
        """The active record of ``env``, or :class:`RequestRefused` naming why not."""
        record = self._records.get(env)
        if record is None:
            raise RequestRefused("not-found", no_such_environment(env))
        if record.retired is not None:
            raise RequestRefused("retired", f"environment {env!r} is retired")
        return record

    def _add(self, record: Environment) -> Environment:
        self._records[record.id] = record
        return record


def no_such_environment(env: str) -> str:
    return (
        f"no environment {env!r}; create it with: edgeplane env create {env} "
        "--stage dev --location LOCATION --purpose PURPOSE"
    )


def unknown_environment(env: str, known: Iterable[str]) -> str:
    """The one line for an id nobody knows, with the known id it is a near miss of."""
    close = difflib.get_close_matches(env, sorted(set(known)), n=1, cutoff=0.75)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no environment {env!r}{guess}; see: edgeplane env list --all"


def _new_record(request: EnvCreate, now: float) -> Environment:
    location, purpose = request.location.strip(), request.purpose.strip()
    for name, value in (("location", location), ("purpose", purpose)):
        if not value:
            raise RequestRefused("invalid", f"{name}: must not be empty")
    if request.stage not in STAGES:
        raise RequestRefused("invalid", f"stage: expected one of {', '.join(STAGES)}")
    try:
        if request.id:
            env = validate_env_id(request.id)
        else:
            env = derive_env_id(request.stage, location, purpose)
    except InvalidId as exc:
        raise RequestRefused("invalid", str(exc)) from exc
    return Environment(
        id=env,
        project=request.project,
        stage=request.stage,
        location=location,
        purpose=purpose,
        labels=dict(request.labels),
        created=now,
    )


def _cloud_record(project: str, now: float) -> Environment:
    return Environment(
        id=cloud_env_id(project),
        project=project,
        stage="dev",
        location="cloud",
        purpose="default",
        labels={"managed": "central"},
        created=now,
    )
