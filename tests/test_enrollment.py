"""Enrollment, operators and retirement against a site's broker made by ``broker init``: a
real controller logged in as ``edgeplane-controller``, operator commands run as the user
runs them (``--config admin.toml``), and an agent started with nothing but its bootstrap
file. What is asserted is what a user sees, and what the broker lets each identity do."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.site import (
    BAD_CREDENTIALS,
    NOT_AUTHORIZED,
    Identity,
    SiteBroker,
)
from tests.support.site_system import (
    Site,
    connack,
    is_online,
    read_toml,
    refused_within,
)
from tests.support.system import open_system

pytestmark = pytest.mark.slow

CREATE = ("env", "create", "--stage", "prod", "--location", "berlin", "--purpose", "vision")


@pytest.fixture
async def site(tmp_path: Path, procs: list[Proc]) -> AsyncIterator[Site]:
    broker = SiteBroker.create(tmp_path / "site", TopicRoot("enroll/edgeplane/v1"))
    broker.start()
    try:
        yield Site(broker, tmp_path, procs)
    finally:
        broker.stop()


async def test_env_create_writes_a_bootstrap_file_that_is_all_an_agent_needs(
    site: Site,
) -> None:
    await site.start_controller()
    recorder = site.recorder()
    bootstrap = site.tmp / "edge-a.toml"
    created = await site.cli(*CREATE, "edge-a", "--output", str(bootstrap))
    assert created.code == 0, str(created)
    assert created.stdout.splitlines()[0] == "edge-a"
    assert f"wrote {bootstrap} (mode 0600)" in created.stdout
    assert stat.S_IMODE(bootstrap.stat().st_mode) == 0o600
    values = read_toml(bootstrap)
    assert values["env_id"] == values["username"] == "edge-a"
    assert values["broker"] == site.broker.url
    assert values["topic_root"] == str(site.root)
    assert values["ca_pem"] == site.broker.ca_file.read_text()
    password = values["password"]
    assert len(password) >= 32  # 192 random bits, URL-safe
    assert site.controller is not None
    assert f"--command-key {values['command_key']}" in site.controller.output()

    # Not one message on the broker, nor a log line, holds the password.
    recorded = await asyncio.to_thread(
        recorder.wait_for, lambda m: m.topic == site.root.view("edge-a")
    )
    recorder.close()
    recorded += list(recorder.messages.queue)
    assert any(m.topic.startswith("$CONTROL") for m in recorded)  # the plugin's answers
    assert all(password.encode() not in m.payload for m in recorded)
    assert site.controller is not None
    assert password not in site.controller.output()
    assert password not in site.broker.log_path.read_text(errors="replace")

    # The file's identity may do what an agent does, and no more.
    env = Identity("edge-a", password, client_id="edge-a")
    with site.broker.client(env) as agent_client:
        assert agent_client.subscribe(site.root.cmd("edge-a")) == [1]
        assert agent_client.subscribe(site.root.cmd("edge-b"), "#") == [NOT_AUTHORIZED] * 2
        assert agent_client.publish(site.root.cmd("edge-a")) == NOT_AUTHORIZED
        assert agent_client.publish(site.root.status("edge-b")) == NOT_AUTHORIZED
    assert connack(site, Identity("edge-a", password, client_id="someone-else")) != 0

    # An agent started with nothing but the file comes online.
    with site.watch(site.root.all_views()) as views:
        await site.start_agent(bootstrap)
        await asyncio.to_thread(
            views.wait_for, lambda m: m.topic == site.root.view("edge-a") and is_online(m), 30.0
        )
    shown = await site.cli("env", "show", "edge-a", "--json")
    assert json.loads(shown.stdout)["status"] == "online", str(shown)


async def test_an_existing_output_file_is_refused_before_anything_is_created(
    site: Site,
) -> None:
    await site.start_controller()
    taken = site.tmp / "taken.toml"
    taken.write_text("# mine\n")
    refused = await site.cli(*CREATE, "edge-c", "--output", str(taken))
    assert refused.code != 0
    assert refused.stderr.strip() == (
        f"edgeplane: --output: {taken} exists; not overwritten (--force replaces it)"
    )
    assert taken.read_text() == "# mine\n"
    listed = await site.cli("env", "list", "--json")
    assert "edge-c" not in [env["id"] for env in json.loads(listed.stdout)]

    forced = await site.cli(*CREATE, "edge-c", "--output", str(taken), "--force")
    assert forced.code == 0, str(forced)
    assert read_toml(taken)["env_id"] == "edge-c"
    assert stat.S_IMODE(taken.stat().st_mode) == 0o600

    for name in ("edgeplane-controller", "admin"):
        clash = await site.cli(*CREATE, name, "--output", str(site.tmp / f"{name}.toml"))
        assert clash.code == 1, str(clash)
        assert name in clash.stderr
        assert not (site.tmp / f"{name}.toml").exists()
        # Without a broker identity too: retiring such a record would aim at that login.
        plain = await site.cli(*CREATE, name)
        assert plain.code == 1, str(plain)
        assert name in plain.stderr
    # and the admin still works, the controller still answers
    assert (await site.cli("env", "list")).code == 0


async def test_operators_are_added_listed_and_removed_and_a_viewer_only_reads(
    site: Site,
) -> None:
    await site.start_controller()
    viewer_toml = site.tmp / "viewer.toml"
    added = await site.cli("operator", "add", "ops-view", "--role", "viewer", "--output",
                           str(viewer_toml))  # fmt: skip
    assert added.code == 0, str(added)
    assert added.stdout == f"added operator ops-view (viewer); wrote {viewer_toml} (mode 0600)\n"
    assert stat.S_IMODE(viewer_toml.stat().st_mode) == 0o600
    assert read_toml(viewer_toml)["username"] == "ops-view"

    status = await site.cli("status", config=viewer_toml)
    assert status.code == 0, str(status)
    denied = await site.cli("env", "list", config=viewer_toml)
    assert denied.code == 1
    assert "does not let ops-view read the controller's replies" in denied.stderr, str(denied)
    assert len(denied.stderr.strip().splitlines()) == 1

    listed = await site.cli("operator", "list")
    assert [line.split()[:3] for line in listed.stdout.splitlines()] == [
        ["NAME", "ROLE", "GEN"],
        ["admin", "admin", "0"],
        ["ops-view", "viewer", "0"],
    ]
    listed_json = json.loads((await site.cli("operator", "list", "--json")).stdout)
    assert [(o["name"], o["role"], o["generation"]) for o in listed_json] == [
        ("admin", "admin", 0),
        ("ops-view", "viewer", 0),
    ]

    self_removal = await site.cli("operator", "remove", "admin")
    assert self_removal.code == 1
    assert "admin cannot remove itself" in self_removal.stderr

    removed = await site.cli("operator", "remove", "ops-view")
    assert removed.code == 0, str(removed)
    viewer = Identity("ops-view", read_toml(viewer_toml)["password"])
    assert connack(site, viewer) in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    again = await site.cli("operator", "remove", "ops-view")
    assert again.code == 1
    assert "no operator 'ops-view'" in again.stderr


async def test_retire_locks_out_a_connected_agent_and_its_password(site: Site) -> None:
    await site.start_controller()
    bootstrap = site.tmp / "edge-r.toml"
    assert (await site.cli(*CREATE, "edge-r", "--output", str(bootstrap))).code == 0
    with site.watch(site.root.all_views()) as views:
        agent = await site.start_agent(bootstrap)
        await asyncio.to_thread(
            views.wait_for, lambda m: m.topic == site.root.view("edge-r") and is_online(m), 30.0
        )
    retired = await site.cli("env", "retire", "edge-r")
    assert retired.code == 0, str(retired)
    assert await agent.wait(40) == 0
    password = read_toml(bootstrap)["password"]
    env = Identity("edge-r", password, client_id="edge-r")
    await asyncio.to_thread(refused_within, site, env, 40.0)


async def test_retire_kicks_a_client_that_ignores_the_command(site: Site) -> None:
    await site.start_controller()
    bootstrap = site.tmp / "edge-k.toml"
    assert (await site.cli(*CREATE, "edge-k", "--output", str(bootstrap))).code == 0
    env = Identity("edge-k", read_toml(bootstrap)["password"], client_id="edge-k")
    with site.broker.client(env) as rogue:  # connected, never says it is online
        retired = await site.cli("env", "retire", "edge-k")
        assert retired.code == 0, str(retired)
        # Kicked: either told while waiting for the SUBACK, or found gone before sending.
        with pytest.raises(ConnectionError, match=r"disconnected by the broker|not currently"):
            await asyncio.to_thread(rogue.subscribe, site.root.cmd("edge-k"), timeout=10.0)
    assert connack(site, env) in (BAD_CREDENTIALS, NOT_AUTHORIZED)


async def test_identity_commands_on_a_broker_without_identities_are_refused(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        output = tmp_path / "boot.toml"
        refused = await system.cli(*CREATE, "edge-d", "--output", str(output))
        assert refused.code == 1
        assert refused.stderr.strip() == (
            "edgeplane: this broker has no identities: it was not made by edgeplane broker "
            "init (the controller logs in without a user name)"
        )
        assert not output.exists()
        listed = await system.cli("operator", "list")
        assert listed.code == 1
        assert "this broker has no identities" in listed.stderr
        plain = await system.cli(*CREATE, "edge-d")
        assert (plain.code, plain.stdout, plain.stderr) == (0, "edge-d\n", "")
