"""Step 5, workflow compatibility on the gateway: the workflows the agent keeps to start
again at boot (its executor's record, ``executor.json``) against the local models dir (the
rule of :mod:`shared.versions`), the secrets file and the buckets, by the preflight's own
checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.doctor import checks as c
from edgeplane.edge_agent.errors import AgentError
from edgeplane.shared.checkup import CheckResult
from edgeplane.shared.workflow import Workflow

__all__ = ["installed_workflows", "secrets_file_check", "workflow_checks"]


def installed_workflows(state_dir: Path) -> list[Workflow]:
    """The services the executor keeps, in name order; :class:`ValueError` naming the
    record when it cannot be read."""
    from edgeplane.edge_agent.execution.record import STATE_FILE, Record

    path = state_dir / STATE_FILE
    try:
        record = msgspec.json.decode(path.read_bytes(), type=Record)
    except FileNotFoundError:
        return []
    except (OSError, msgspec.DecodeError) as exc:
        raise ValueError(f"the executor's record {str(path)!r} cannot be read: {exc}") from exc
    return [record.services[name].workflow for name in sorted(record.services)]


def secrets_file_check(settings: AgentConfig) -> CheckResult:
    """The secrets file: present, private, parsed; its names (never its values)."""
    from edgeplane.edge_agent.secrets import load_secrets

    path = settings.secrets_file
    if path is None:
        return c.result("compatibility", "secrets-file", "pass", "no secrets file configured")
    try:
        names = sorted(load_secrets(path).names())
    except AgentError as exc:
        return c.result(
            "compatibility", "secrets-file", "fail", str(exc), "chmod 600 it, one NAME=value a line"
        )
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return c.result(
        "compatibility", "secrets-file", "pass", f"{len(names)} secret(s): {shown or 'none'}"
    )


def workflow_checks(settings: AgentConfig) -> list[tuple[str, Callable[[], CheckResult]]]:
    """One check (name, how) per installed workflow; a skip when none is installed."""
    try:
        workflows = installed_workflows(settings.state_dir)
    except ValueError as exc:
        failed = c.result("compatibility", "workflows", "fail", str(exc))
        return [("workflows", lambda: failed)]
    if not workflows:
        none = c.result("compatibility", "workflows", "skip", "no workflow is installed")
        return [("workflows", lambda: none)]
    return [(f"workflow {w.name}", _checker(w, settings)) for w in workflows]


def _checker(workflow: Workflow, settings: AgentConfig) -> Callable[[], CheckResult]:
    def check() -> CheckResult:
        from edgeplane.edge_agent.execution.preflight import PreflightContext, run_preflight

        context = PreflightContext(
            models=_models(settings),
            secrets=_secret_names(settings),
            endpoints=settings.endpoints,
        )
        found = run_preflight(workflow, context)
        failures = [f"{k.kind} {k.name}: {k.detail}" for k in found if not k.ok]
        return c.judge_workflow(workflow.name, failures, len(found))

    return check


def _models(settings: AgentConfig) -> dict[str, list[str]]:
    from edgeplane.edge_agent.inventory import scan_models

    try:
        return scan_models(settings.models_dir)
    except AgentError:
        return {}


def _secret_names(settings: AgentConfig) -> frozenset[str] | None:
    from edgeplane.edge_agent.secrets import load_secrets

    if settings.secrets_file is None:
        return None
    try:
        return load_secrets(settings.secrets_file).names()
    except AgentError:
        return frozenset()
