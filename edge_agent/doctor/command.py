"""``edge-agent doctor [--json] [--bundle FILE]``: the checks in the documented order, the
report as text or JSON, exit status 1 when a check failed."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.doctor.installed import secrets_file_check, workflow_checks
from edgeplane.edge_agent.doctor.probes import Probes
from edgeplane.edge_agent.doctor.runner import DoctorStep, run_steps
from edgeplane.shared.checkup import Report, exit_status, render_text
from edgeplane.shared.errors import SettingsError

__all__ = ["doctor_steps", "run_doctor"]


def doctor_steps(settings: AgentConfig) -> list[DoctorStep]:
    """Every check, in the order of the source document, with what each depends on."""
    p = Probes(settings)
    steps = [
        DoctorStep("process", "state-dir", p.state_dir),
        DoctorStep("process", "agent", p.agent, after=("process/state-dir",)),
        DoctorStep("process", "outbox", p.outbox, after=("process/state-dir",)),
        DoctorStep("network", "dns", p.dns),
        DoctorStep("network", "tcp", p.tcp, after=("network/dns",)),
        DoctorStep("network", "tls", p.tls, after=("network/tcp",)),
        DoctorStep("network", "mqtt-connect", p.mqtt_connect, after=("network/tcp", "network/tls")),
        DoctorStep("network", "round-trip", p.round_trip, after=("network/mqtt-connect",)),
        DoctorStep("credentials", "login", p.credentials_login, after=("network/mqtt-connect",)),
    ]
    identity = settings.broker.identity
    if identity is not None and identity.cert_file is not None:
        steps.append(DoctorStep("credentials", "client-cert", p.client_cert))
    steps += [
        DoctorStep("credentials", "command-key", p.command_key),
        DoctorStep("resources", "cpu", p.cpu),
        DoctorStep("resources", "memory", p.memory),
        DoctorStep("resources", "disk", p.disk),
        DoctorStep("resources", "open-files", p.open_files),
        DoctorStep("compatibility", "secrets-file", lambda: secrets_file_check(settings)),
    ]
    steps += [
        DoctorStep("compatibility", name, check, after=("compatibility/secrets-file",))
        for name, check in workflow_checks(settings)
    ]
    return steps


def run_doctor(settings: AgentConfig, *, as_json: bool, bundle: str | None) -> int:
    target = _bundle_path(bundle)
    report = run_steps(settings.env_id, doctor_steps(settings))
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode("utf-8") + "\n")
    else:
        sys.stdout.write(render_text(report))
    if target is not None:
        _write(target, report, settings)
    return exit_status(report)


def _bundle_path(bundle: str | None) -> Path | None:
    """``--bundle FILE``, checked before the checks run (they take seconds)."""
    if bundle is None:
        return None
    path = Path(bundle)
    if not bundle.strip() or path.is_dir():
        raise SettingsError(f"--bundle: {bundle!r} is a directory, expected a file to write")
    if not path.parent.is_dir():
        raise SettingsError(f"--bundle: no directory {str(path.parent)!r} to write it in")
    return path


def _write(target: Path, report: Report, settings: AgentConfig) -> None:
    from edgeplane.edge_agent.doctor.bundle import write_bundle

    try:
        write_bundle(target, report, settings)
    except OSError as exc:
        raise SettingsError(f"--bundle: cannot write {str(target)!r}: {exc.strerror}") from exc
    print(f"bundle written: {target} (send it to support; it holds no secret)", file=sys.stderr)
