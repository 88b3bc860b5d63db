"""The workflow spec: what an operator deploys, as frozen msgspec Structs.

A workflow file (YAML or JSON) and the ``workflow`` field of a ``deploy`` command both
decode into :class:`Workflow`. On the wire unknown fields are ignored (the contract's
promise); the file loader (:mod:`controller.operator.workflow_file`) is stricter and names
every field it does not know, because there an unknown field is almost always a typo.

Every ``requires`` list may be empty or absent::

    name: vision-inspect
    version: 1.4.0
    kind: job                      # or "service": the last step keeps running
    critical: false                # true: sent only to a steady environment that passed
                                   # a dry run of this version lately (docs/operations.md)
    requires:
      models: [{name: defect-detector, version: ">=2.1,<3"}]
      datasources: [{name: line-camera, url: "tcp://10.0.0.5:554"}]
      buckets: [{name: results, path: /var/lib/edgeplane/results, access: write}]
      secrets: [CAMERA_TOKEN]
      endpoints: [inference-api]
    steps:
      - {name: inspect, run: ["python3", "-m", "inspect_line", "--once"], timeout: 60}
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "DEFAULT_STEP_TIMEOUT",
    "BucketAccess",
    "BucketNeed",
    "DatasourceNeed",
    "ModelNeed",
    "Requires",
    "Step",
    "Workflow",
    "WorkflowKind",
    "is_name",
]

DEFAULT_STEP_TIMEOUT: Final = 600.0

# Names people give things: workflows, steps, models, datasources, buckets, endpoints.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=f"^{_NAME.pattern}$")]


def is_name(value: str) -> bool:
    """Whether ``value`` is a :data:`Name` (a workflow's, say)."""
    return len(value) <= 64 and _NAME.fullmatch(value) is not None


# A secret's name is also the name of the environment variable a step sees it as.
SecretName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
]
Text = Annotated[str, msgspec.Meta(max_length=1024)]
Arg = Annotated[str, msgspec.Meta(max_length=4096)]
StepTimeout = Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)]

BucketAccess = Literal["read", "write", "readwrite"]
WorkflowKind = Literal["job", "service"]


class ModelNeed(msgspec.Struct, frozen=True, omit_defaults=True):
    """A model the target must hold: ``DIR/{name}/{version}/`` in the agent's models dir,
    with a version matching the PEP 440 specifier (empty: any version)."""

    name: Name
    version: Annotated[str, msgspec.Meta(max_length=256)] = ""


class DatasourceNeed(msgspec.Struct, frozen=True, omit_defaults=True):
    """A source the target must reach: tcp://, http://, https://, mqtt:// or file:// URL."""

    name: Name
    url: Text


class BucketNeed(msgspec.Struct, frozen=True, omit_defaults=True):
    """A local directory the workflow reads and/or writes, checked by probing it."""

    name: Name
    path: Text
    access: BucketAccess = "read"


class Requires(msgspec.Struct, frozen=True, omit_defaults=True):
    models: list[ModelNeed] = []
    datasources: list[DatasourceNeed] = []
    buckets: list[BucketNeed] = []
    secrets: list[SecretName] = []
    endpoints: list[Name] = []


class Step(msgspec.Struct, frozen=True, omit_defaults=True):
    """One subprocess: ``run`` is its argv (no shell), ``env`` extra environment variables,
    ``timeout`` seconds before the whole process group is killed (a service's last step
    has no timeout: it is meant to keep running)."""

    name: Name
    run: Annotated[list[Arg], msgspec.Meta(min_length=1, max_length=256)]
    env: dict[SecretName, Text] = {}
    timeout: StepTimeout = DEFAULT_STEP_TIMEOUT


class Workflow(msgspec.Struct, frozen=True, omit_defaults=True):
    name: Name
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    steps: Annotated[list[Step], msgspec.Meta(min_length=1, max_length=64)]
    kind: WorkflowKind = "job"
    requires: Requires = Requires()
    # Sent (alone or in a rollout) only to an environment that is online with a steady
    # heartbeat and passed a dry run of this name and version within the controller's
    # --validation-max-age (docs/operations.md, Critical workflows). The agent ignores it.
    critical: bool = False
