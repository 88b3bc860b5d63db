"""The product on a site's broker made by ``broker init``, as a site runs it: a cloned
bootstrap file is caught within seconds, and a deployment with secrets leaves no secret and
no credential readable on the broker or in a log."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeplane.shared.topics import TopicRoot
from tests.support.controller import status_payload, will_payload
from tests.support.procs import Proc
from tests.support.site import DynsecAdmin, Received, SiteBroker
from tests.support.site_system import Site, is_offline, is_online, read_toml
from tests.support.system import write_secrets

pytestmark = pytest.mark.slow

CREATE = ("env", "create", "--stage", "prod", "--location", "hamburg", "--purpose", "line")
ENV = "prod-hamburg-line"
SECRET = "s3cr3t-VALUE-9f2c"


@pytest.fixture
async def site(tmp_path: Path, procs: list[Proc]) -> AsyncIterator[Site]:
    broker = SiteBroker.create(tmp_path / "site", TopicRoot("site-e2e/edgeplane/v1"))
    broker.start()
    try:
        yield Site(broker, tmp_path, procs)
    finally:
        broker.stop()


def _online_view(message: Received) -> bool:
    return message.topic.endswith(f"/view/{ENV}") and is_online(message)


async def _enrolled(site: Site) -> Path:
    await site.start_controller()
    bootstrap = site.tmp / f"{ENV}.toml"
    created = await site.cli(*CREATE, "--output", str(bootstrap))
    assert created.code == 0, str(created)
    return bootstrap


async def test_a_cloned_bootstrap_file_raises_identity_conflict_within_10_seconds(
    site: Site,
) -> None:
    bootstrap = await _enrolled(site)
    with site.watch(site.root.all_views()) as views:
        first = await site.start_agent(bootstrap, "first")
        await asyncio.to_thread(views.wait_for, _online_view, 30.0)

    def conflict(message: Received) -> bool:
        alert: dict[str, object] = json.loads(message.payload or b"{}")
        return alert.get("kind") == "identity-conflict" and alert.get("state") == "raised"

    with site.watch(site.root.all_alerts()) as alerts:
        started = time.monotonic()
        await site.start_agent(bootstrap, "clone")  # the same file on a second machine
        raised = await asyncio.to_thread(alerts.wait_for, conflict, 10.0)
    assert json.loads(raised[-1].payload)["env"] == ENV
    assert time.monotonic() - started < 10.0
    assert first.process.returncode is None  # neither runtime gives up its identity
    assert "broker refused" not in first.output()  # a scoped role is not an error


async def test_a_deploy_with_secrets_leaves_no_secret_and_no_credential_readable(
    site: Site,
) -> None:
    bootstrap = await _enrolled(site)
    secrets_file = site.tmp / "secrets.env"
    write_secrets(secrets_file, {"LINE_TOKEN": SECRET})
    recorder = site.recorder()
    with site.watch(site.root.all_views()) as views:
        agent = await site.start_agent(bootstrap, extra=("--secrets-file", str(secrets_file)))
        await asyncio.to_thread(views.wait_for, _online_view, 30.0)
    script = site.tmp / "use.py"
    script.write_text("import os\nprint('token is', os.environ['LINE_TOKEN'])\n")
    workflow = site.tmp / "use.json"
    workflow.write_text(
        json.dumps(
            {
                "name": "use-token",
                "version": "1.0.0",
                "requires": {"secrets": ["LINE_TOKEN"]},
                "steps": [{"name": "use", "run": [sys.executable, str(script)]}],
            }
        )
    )
    deployed = await site.cli("deploy", str(workflow), "--env", ENV, "--wait")
    assert deployed.code == 0, str(deployed)
    assert "token is ***" in (await site.cli("events", "--env", ENV, "--json")).stdout
    recorder.close()
    recorded = list(recorder.messages.queue)
    assert any(m.topic == site.root.cmd(ENV) for m in recorded)  # the recording saw the deploy

    controller_toml = site.broker.result.layout.controller_toml
    command_key = Path(read_toml(controller_toml)["db"]).with_name("command-key")
    credentials = {
        "the secret": SECRET,
        "the agent's password": read_toml(bootstrap)["password"],
        "the admin's password": read_toml(site.admin_toml)["password"],
        "the controller's password": read_toml(controller_toml)["password"],
        "the command key": command_key.read_text().strip(),
    }
    assert site.controller is not None
    places = {
        **{f"MQTT {m.topic}": m.payload for m in recorded},
        "the controller's log": site.controller.output().encode(),
        "the agent's log": agent.output().encode(),
        "the CLI's output": (deployed.stdout + deployed.stderr).encode(),
    }
    leaks = [
        f"{what} in {where}"
        for what, value in credentials.items()
        for where, text in places.items()
        if value.encode() in text
    ]
    assert leaks == []


async def test_a_ghost_is_forgotten_under_broker_init_and_stays_forgotten_after_a_restart(
    site: Site,
) -> None:
    """The controller's identity may clear the ghost's retained status: otherwise the
    restarted controller would learn the id again from it."""
    ghost = "prod-hamburg-lnie"  # a client made by hand for a mistyped id, no record
    await site.start_controller()
    with DynsecAdmin(site.broker) as admin:
        identity = admin.add_environment(ghost)
    status = site.root.status(ghost)
    with site.watch(site.root.all_views()) as views:
        with site.broker.client(identity) as agent:
            assert agent.publish(status, status_payload(ghost), retain=True) == 0
            assert agent.publish(status, will_payload(ghost, reason="shutdown"), retain=True) == 0

        def ghost_offline(message: Received) -> bool:
            return message.topic == site.root.view(ghost) and is_offline(message)

        await asyncio.to_thread(views.wait_for, ghost_offline, 20.0)
        forgot = await site.cli("env", "forget", ghost, "--json")
        assert forgot.code == 0, str(forgot)
        assert json.loads(forgot.stdout)["registered"] is False
        cleared = await asyncio.to_thread(
            views.wait_for, lambda m: m.topic == site.root.view(ghost) and not m.payload, 20.0
        )
        assert cleared[-1].retain is False  # a live clear (no retained view is left)

    await site.kill_controller()
    await site.start_controller()
    listed = await site.cli("env", "list", "--json")
    assert listed.code == 0, str(listed)
    assert ghost not in [info["id"] for info in json.loads(listed.stdout)]
