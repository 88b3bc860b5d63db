"""``edge-agent doctor`` and ``--bundle``: the checks in the documented order against real
brokers (the test session's mosquitto, a site broker made by ``broker init``), what it
says when something is wrong, that it never takes over a running agent, and that the
bundle holds the report and no secret."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.broker.process import free_port
from edgeplane.edge_agent.cli import main
from edgeplane.edge_agent.doctor.checks import (
    LockFinding,
    judge_cert,
    judge_lock,
    judge_outbox,
    judge_percent,
)
from edgeplane.edge_agent.doctor.probes import outbox_finding
from edgeplane.edge_agent.doctor.runner import DoctorStep, run_steps
from edgeplane.edge_agent.errors import StateDirError
from edgeplane.edge_agent.instance_lock import LockHolder, hold_agent_lock, lock_holder
from edgeplane.edge_agent.outbox import Outbox
from edgeplane.edge_agent.state import RECENT_LOG
from edgeplane.shared import logs
from edgeplane.shared.checkup import CheckResult, Report
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.logs import RecentLogFile
from edgeplane.shared.messages import Pong
from edgeplane.shared.topics import TopicRoot
from tests.support.agent_procs import start_agent, wait_online
from tests.support.command_key import PUBLIC_KEY
from tests.support.probe import open_probe
from tests.support.procs import Proc
from tests.support.site import DynsecAdmin, SiteBroker

PASSWORD = "s3cret-pass-word-4711"
SECRET_VALUE = "camera-token-0xC0FFEE"


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Report, str]:
    code = main(["doctor", "--json", *argv])
    out, err = capsys.readouterr()
    return code, msgspec.json.decode(out, type=Report), err


def by_key(report: Report) -> dict[str, CheckResult]:
    return {f"{check.area}/{check.name}": check for check in report.checks}


def base_args(tmp_path: Path, broker: str, root: TopicRoot, env: str) -> list[str]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    return ["--env-id", env, "--broker", broker, "--state-dir", str(state),
            "--topic-root", root.value, "--command-key", PUBLIC_KEY]  # fmt: skip


# --- usage ----------------------------------------------------------------------------------
def test_a_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--env-id", "dev-lab-doc", "--frobnicate"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--frobnicate" in err
    assert "doctor --help" in err


def test_a_bundle_path_that_is_a_directory_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["doctor", "--env-id", "dev-lab-doc", "--bundle", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("edge-agent: --bundle: ")


# --- the order, dependencies and limits (pure) ----------------------------------------------
def test_a_hung_check_is_cut_off_and_what_depends_on_it_skipped() -> None:
    release = threading.Event()

    def hangs() -> CheckResult:
        release.wait(30)
        return CheckResult(area="network", name="tcp", state="pass", reason="late")

    def passes() -> CheckResult:
        return CheckResult(area="resources", name="cpu", state="pass", reason="fine")

    steps = [
        DoctorStep("network", "tcp", hangs),
        DoctorStep("network", "tls", passes, after=("network/tcp",)),
        DoctorStep("network", "mqtt-connect", passes, after=("network/tls",)),
        DoctorStep("resources", "cpu", passes),
    ]
    report = run_steps("dev-lab-doc", steps, limit=0.2, now=5.0)
    release.set()
    states = [(c.name, c.state) for c in report.checks]
    assert states == [("tcp", "fail"), ("tls", "skip"), ("mqtt-connect", "skip"), ("cpu", "pass")]
    assert "cut off" in report.checks[0].reason
    assert report.checks[2].reason == "skipped: network/tcp failed"
    assert report.cause == "network/tcp"


def test_a_certificate_near_its_expiry_warns_and_an_expired_one_fails() -> None:
    day = 86_400.0
    assert judge_cert("tls", "network", "cert", 100 * day, 0.0).state == "pass"
    assert judge_cert("tls", "network", "cert", 13 * day, 0.0).state == "warn"
    assert judge_cert("tls", "network", "cert", -day, 0.0).state == "fail"


def test_the_lock_held_by_this_identity_is_reported_and_by_another_fails() -> None:
    mine = judge_lock(LockFinding(True, 42, "dev-lab-doc"), "dev-lab-doc")
    assert (mine.state, mine.reason) == ("pass", "the agent of dev-lab-doc runs now (pid 42)")
    other = judge_lock(LockFinding(True, 43, "dev-lab-other"), "dev-lab-doc")
    assert other.state == "fail"
    assert "pid 43, environment dev-lab-other" in other.reason


def test_resource_thresholds_warn_at_90_and_fail_at_98_percent() -> None:
    assert judge_percent("disk", "disk", 89.9).state == "pass"
    assert judge_percent("disk", "disk", 90.0).state == "warn"
    assert judge_percent("disk", "disk", 98.0).state == "fail"
    assert judge_percent("cpu", "cpu", 100.0, can_fail=False).state == "warn"
    assert judge_percent("memory", "memory", None).reason == "memory could not be measured"


def test_the_outbox_is_read_without_the_agent_s_help(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, "dev-lab-doc", clock=ManualClock(1000.0))
    outbox.emit(Pong, cmd="c-1")
    outbox.emit(Pong, cmd="c-2")
    found = outbox_finding(tmp_path)  # while the agent keeps it open
    outbox.close()
    assert (found.rows, found.oldest) == (2, 1000.0)
    assert found.size > 0
    check = judge_outbox(found, now=1060.0)
    assert check.reason.startswith("the outbox opens: 2 event(s) waiting, the oldest 60 s old")


def test_the_text_report_names_the_likely_cause(
    tmp_path: Path, root: TopicRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = f"mqtt://127.0.0.1:{free_port()}"
    code = main(["doctor", *base_args(tmp_path, broker, root, "dev-lab-doc")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].startswith("PASS  1. process/state-dir: ")
    assert any(line.startswith("FAIL  2. network/tcp: cannot connect to ") for line in lines)
    assert lines[-2].startswith("likely cause: network/tcp: cannot connect to 127.0.0.1:")
    assert lines[-1].startswith("hint: is the broker running")


def test_a_second_agent_on_a_locked_state_dir_is_refused(tmp_path: Path) -> None:
    assert lock_holder(tmp_path) is None
    lock = hold_agent_lock(tmp_path, "dev-lab-doc")
    try:
        assert lock_holder(tmp_path) == LockHolder(os.getpid(), "dev-lab-doc")
        with pytest.raises(StateDirError, match="in use by another agent"):
            hold_agent_lock(tmp_path, "dev-lab-doc")
    finally:
        lock.release()
    assert lock_holder(tmp_path) is None


def test_edge_agent_run_refuses_a_state_dir_another_agent_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = hold_agent_lock(tmp_path, "dev-lab-doc")
    try:
        code = main(["run", "--env-id", "dev-lab-doc", "--state-dir", str(tmp_path)])
    finally:
        lock.release()
    assert code == 2
    assert capsys.readouterr().err == (
        f"edge-agent: --state-dir: state directory {str(tmp_path)!r} is in use by another "
        f"agent (pid {os.getpid()}, environment dev-lab-doc)\n"
    )


# --- on the gateway ---------------------------------------------------------------------
def test_a_closed_broker_port_fails_the_network_and_skips_the_credentials(
    tmp_path: Path, root: TopicRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = f"mqtt://127.0.0.1:{free_port()}"
    code, report, _ = doctor(capsys, *base_args(tmp_path, broker, root, "dev-lab-doc"))
    checks = by_key(report)
    assert code == 1
    assert checks["network/tcp"].state == "fail"
    assert "Connection refused" in checks["network/tcp"].reason
    assert checks["credentials/login"].state == "skip"
    assert checks["credentials/login"].reason == "skipped: network/tcp failed"
    assert report.cause == "network/tcp"
    assert report.hint
    assert [c.area for c in report.checks] == sorted(
        (c.area for c in report.checks),
        key=["process", "network", "credentials", "resources", "compatibility"].index,
    )


def test_a_state_dir_that_cannot_be_written_fails_the_process_check(
    tmp_path: Path, broker: MosquittoProcess, root: TopicRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = base_args(tmp_path, broker.url, root, "dev-lab-doc")
    args[args.index("--state-dir") + 1] = str(blocker / "state")
    code, report, _ = doctor(capsys, *args)
    assert code == 1
    assert by_key(report)["process/state-dir"].state == "fail"
    assert report.cause == "process/state-dir"


def test_an_installed_workflow_missing_its_model_fails_compatibility(
    tmp_path: Path, broker: MosquittoProcess, root: TopicRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    args = base_args(tmp_path, broker.url, root, "dev-lab-doc")
    models = tmp_path / "models"
    (models / "detector" / "1.0.0").mkdir(parents=True)
    workflow = {
        "name": "inspect",
        "version": "1.0.0",
        "requires": {"models": [{"name": "detector", "version": ">=2"}]},
        "steps": [{"name": "s", "run": ["true"]}],
    }
    record = {"services": {"inspect": {"dep": "d-1", "cmd": "c-1", "workflow": workflow}}}
    (tmp_path / "state" / "executor.json").write_text(json.dumps(record))
    code, report, _ = doctor(capsys, *args, "--models-dir", str(models))
    check = by_key(report)["compatibility/workflow inspect"]
    assert code == 1
    assert check.state == "fail"
    assert "model detector" in check.reason


# --- a site broker made by `edgeplane broker init` -------------------------------------------
def site_args(
    tmp_path: Path, site: SiteBroker, env: str, password: str, *, ca: bool = True
) -> list[str]:
    config = tmp_path / "agent.toml"
    ca_line = f'ca_file = "{site.ca_file}"\n' if ca else ""  # without: the system's CAs
    config.write_text(
        f'env_id = "{env}"\nbroker = "{site.url}"\nusername = "{env}"\n'
        f'password = "{password}"\n{ca_line}'
        f'topic_root = "{site.root.value}"\ncommand_key = "{PUBLIC_KEY}"\n'
    )
    config.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    return ["--config", str(config), "--state-dir", str(state)]


def test_a_healthy_gateway_passes(
    tmp_path: Path, site_broker: SiteBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    with DynsecAdmin(site_broker) as admin:
        agent = admin.add_environment("dev-lab-doc-ok")
    args = site_args(tmp_path, site_broker, "dev-lab-doc-ok", agent.password)
    code, report, _ = doctor(capsys, *args)
    checks = by_key(report)
    assert code == 0, report
    # no agent runs here: said as a warning, with how to start one
    assert checks["process/agent"].state == "warn"
    assert "stays offline until one does" in checks["process/agent"].reason
    for key in ("process/state-dir", "process/outbox", "network/dns",
                "network/tcp", "network/tls", "network/mqtt-connect", "credentials/login",
                "credentials/command-key", "resources/memory", "resources/disk"):  # fmt: skip
        assert checks[key].state == "pass", checks[key]
    assert checks["network/round-trip"].state in ("pass", "warn")  # warn: a busy machine
    assert checks["compatibility/workflows"].state == "skip"
    assert report.cause == ""


def test_a_wrong_password_fails_the_credentials_naming_the_connack(
    tmp_path: Path, site_broker: SiteBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    with DynsecAdmin(site_broker) as admin:
        admin.add_environment("dev-lab-doc-pw")
    code, report, _ = doctor(capsys, *site_args(tmp_path, site_broker, "dev-lab-doc-pw", "wrong"))
    login = by_key(report)["credentials/login"]
    assert code == 1
    assert by_key(report)["network/mqtt-connect"].state == "pass"
    assert login.state == "fail"
    assert "Not authorized (CONNACK 135)" in login.reason
    assert report.cause == "credentials/login"


def test_a_broker_certificate_from_another_ca_fails_the_tls_check(
    tmp_path: Path, site_broker: SiteBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    args = site_args(tmp_path, site_broker, "dev-lab-doc-ca", "any", ca=False)
    code, report, _ = doctor(capsys, *args)
    tls = by_key(report)["network/tls"]
    assert code == 1
    assert tls.state == "fail"
    assert tls.reason.startswith("the broker's certificate is not trusted: ")
    assert by_key(report)["credentials/login"].reason == "skipped: network/tls failed"
    assert report.cause == "network/tls"


def test_on_a_broker_binding_client_ids_a_running_agents_id_is_never_tried(
    tmp_path: Path, site_broker: SiteBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    env = "dev-lab-doc-bound"
    with DynsecAdmin(site_broker) as admin:
        agent = admin.add_environment(env)
    args = site_args(tmp_path, site_broker, env, agent.password)
    lock = hold_agent_lock(tmp_path / "state", env)  # as a running agent holds it
    try:
        code, report, _ = doctor(capsys, *args)
    finally:
        lock.release()
    checks = by_key(report)
    assert checks["network/mqtt-connect"].facts["client_id"].startswith(f"{env}-doctor-")
    assert checks["credentials/login"].state == "warn"
    assert f"the agent's ({env}) is not tried" in checks["credentials/login"].reason
    assert code == 0


# --- a running agent ------------------------------------------------------------------------
async def test_the_doctor_never_takes_over_a_running_agent(
    tmp_path: Path,
    broker: MosquittoProcess,
    root: TopicRoot,
    procs: list[Proc],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = "dev-lab-doc-live"
    state = tmp_path / "agent-state"
    status = root.status(env)
    async with open_probe(broker.url, status) as probe:
        await start_agent(procs, tmp_path, broker.url, root, env, state_dir=state)
        online = await wait_online(probe, status)
        args = base_args(tmp_path, broker.url, root, env)
        args[args.index("--state-dir") + 1] = str(state)
        mark = probe.mark()
        code, report, _ = await asyncio.to_thread(doctor, capsys, *args)
        after = await wait_online(probe, status, after=probe.mark())  # still heartbeating
        seen = [json.loads(m.payload) for m in probe.on(status)[mark:]]
    assert all(message["status"] == "online" for message in seen)  # no will, no offline
    assert after["bdseq"] == online["bdseq"]  # the same connection: never reconnected
    checks = by_key(report)
    assert "runs now (pid" in checks["process/agent"].reason
    assert checks["network/mqtt-connect"].facts["client_id"].startswith(f"{env}-doctor-")
    assert checks["credentials/login"].state == "pass"
    assert code == 0, report


# --- the bundle -----------------------------------------------------------------------------
def test_the_bundle_holds_the_report_and_no_secret(
    tmp_path: Path, broker: MosquittoProcess, root: TopicRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(f"CAMERA_TOKEN={SECRET_VALUE}\n")
    secrets_file.chmod(0o600)
    args = base_args(tmp_path, broker.url, root, "dev-lab-doc-bundle")
    recent_log(tmp_path / "state" / RECENT_LOG, f"camera token {SECRET_VALUE} refused")
    bundle = tmp_path / "support.tar.gz"
    config = tmp_path / "agent.toml"
    config.write_text(f'username = "dev-lab-doc-bundle"\npassword = "{PASSWORD}"\n')
    config.chmod(0o600)
    code = main(["doctor", *args, "--config", str(config),
                 "--secrets-file", str(secrets_file), "--bundle", str(bundle)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, out
    assert "bundle written" in err
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    members = read_members(bundle)
    assert {"report.json", "report.txt", "settings.json", "outbox.json", "versions.json",
            "LOG.txt"} <= set(members)  # fmt: skip
    for name, data in members.items():
        for secret in (PASSWORD, PUBLIC_KEY, SECRET_VALUE):
            assert secret.encode() not in data, f"{secret!r} in {name}"
    report = msgspec.json.decode(members["report.json"], type=Report)
    assert report.subject == "dev-lab-doc-bundle"
    settings: dict[str, Any] = json.loads(members["settings.json"])
    assert settings["password"] == "<redacted>"
    assert settings["command_key"] == "<redacted>"
    assert "stderr" in members["LOG.txt"].decode()
    (line,) = [json.loads(line) for line in members["agent.log"].splitlines()]
    assert line["event"].startswith("camera token ")
    assert line["event"].endswith(" refused")
    assert json.loads(members["outbox.json"])["rows"] == 0
    assert by_key(report)["compatibility/secrets-file"].reason == "1 secret(s): CAMERA_TOKEN"
    assert time.time() - report.at < 120


def recent_log(path: Path, event: str) -> None:
    """One line of the agent's recent log, written as the agent writes it (masked)."""
    logs.redactor.add([SECRET_VALUE])
    handler = RecentLogFile(str(path))
    try:
        record = logging.LogRecord("edgeplane.x", logging.WARNING, __file__, 1, event, (), None)
        handler.emit(record)
    finally:
        handler.close()
        logs.redactor.clear()


def read_members(bundle: Path) -> dict[str, bytes]:
    members = {}
    with tarfile.open(bundle, "r:gz") as tar:
        for info in tar.getmembers():
            extracted = tar.extractfile(info)
            assert extracted is not None
            members[info.name.rsplit("/", 1)[-1]] = extracted.read()
    return members
