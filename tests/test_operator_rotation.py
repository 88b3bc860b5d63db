"""Operators' credential rotation against a site's broker made by ``broker init``: the
real controller, ``edgeplane operator rotate-credentials`` run as a user runs it, and raw
logins that show which passwords the broker still takes. No lockout: until the new
credential has logged in and confirmed, the old one keeps working."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeplane.controller.daemon.broker_admin import BrokerAdmin
from edgeplane.controller.daemon.operator_credentials import WARN_EVERY, OperatorCredentials
from edgeplane.controller.operator.client import ControllerClient
from edgeplane.controller.operator.settings import load_operator_settings
from edgeplane.controller.sealing import EphemeralKey
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.rpc import (
    OperatorInfo,
    OperatorRotate,
    OperatorRotateConfirm,
    OperatorRotated,
)
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.site import BAD_CREDENTIALS, NOT_AUTHORIZED, Identity, SiteBroker
from tests.support.site_system import Site, connack, read_toml
from tests.support.system import wait_for_output

pytestmark = pytest.mark.slow

REFUSED = (BAD_CREDENTIALS, NOT_AUTHORIZED)


@pytest.fixture
async def site(tmp_path: Path, procs: list[Proc]) -> AsyncIterator[Site]:
    broker = SiteBroker.create(tmp_path / "site", TopicRoot("oprot/edgeplane/v1"))
    broker.start()
    try:
        yield Site(broker, tmp_path, procs)
    finally:
        broker.stop()


async def add_operator(site: Site, name: str, role: str = "admin") -> Path:
    path = site.tmp / f"{name}.toml"
    added = await site.cli("operator", "add", name, "--role", role, "--output", str(path))
    assert added.code == 0, str(added)
    return path


def login(path: Path) -> Identity:
    values = read_toml(path)
    return Identity(values["username"], values["password"])


async def operators(site: Site) -> dict[str, dict[str, object]]:
    listed = await site.cli("operator", "list", "--json")
    assert listed.code == 0, str(listed)
    return {entry["name"]: entry for entry in json.loads(listed.stdout)}


async def first_step_only(site: Site, name: str) -> tuple[OperatorRotated, str]:
    """What `rotate-credentials` asks first, as admin, and nothing after: a command that
    died before it confirmed. The new credential's password, opened."""
    settings = load_operator_settings({"config": str(site.admin_toml)})
    key = EphemeralKey()
    request = OperatorRotate(name=name, seal_to=key.public, login="admin")
    async with ControllerClient(settings.broker, settings.topic_root) as controller:
        rotated: OperatorRotated = await controller.call(request, within=10)
    return rotated, key.open(rotated.credential.sealed_password)


async def test_a_rotated_operator_works_with_the_new_file_and_the_old_password_is_refused(
    site: Site,
) -> None:
    await site.start_controller()
    recorder = site.recorder()
    old_file = await add_operator(site, "ops-a")
    old = login(old_file)
    new_file = site.tmp / "ops-a-new.toml"

    rotated = await site.cli("operator", "rotate-credentials", "ops-a", "--output", str(new_file))
    assert rotated.code == 0, str(rotated)
    assert rotated.stdout.startswith(f"rotated operator ops-a to ops-a.1; wrote {new_file}")
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    new = login(new_file)
    assert new.username == "ops-a.1"
    assert read_toml(new_file)["broker"] == site.broker.url

    listed = await site.cli("env", "list", config=new_file)
    assert listed.code == 0, str(listed)
    assert connack(site, new) == 0
    assert connack(site, old) in REFUSED
    assert (await site.cli("env", "list", config=old_file)).code == 1
    shown = (await operators(site))["ops-a"]
    assert (shown["generation"], shown["pending"], shown["due"]) == (1, 0, False)
    assert isinstance(shown["age"], float)

    # A viewer may send nothing: its new login is tried, the requester confirms.
    viewer_file = await add_operator(site, "ops-v", "viewer")
    viewer_old = login(viewer_file)
    viewer_rotated = await site.cli(
        "operator", "rotate-credentials", "ops-v", "--output", str(viewer_file), "--force"
    )
    assert viewer_rotated.code == 0, str(viewer_rotated)
    assert (await site.cli("status", config=viewer_file)).code == 0
    assert connack(site, viewer_old) in REFUSED

    # Removing an operator removes every generation.
    assert (await site.cli("operator", "remove", "ops-a")).code == 0
    assert connack(site, new) in REFUSED

    # No password in any message (the plugin's own included) nor a log line.
    recorder.close()
    recorded = list(recorder.messages.queue)
    assert any(m.topic.startswith("$CONTROL") for m in recorded)
    passwords = [old.password, new.password, viewer_old.password, login(viewer_file).password]
    assert site.controller is not None
    logs = site.controller.output() + site.broker.log_path.read_text(errors="replace")
    for password in passwords:
        assert all(password.encode() not in m.payload for m in recorded)
        assert password not in logs
        assert password not in rotated.stdout + rotated.stderr


async def test_a_rotation_never_confirmed_leaves_both_working_and_is_replaced_when_run_again(
    site: Site,
) -> None:
    await site.start_controller()
    old_file = await add_operator(site, "ops-b")
    old = login(old_file)

    pending, password = await first_step_only(site, "ops-b")
    assert pending.rotated_to == 1
    half_made = Identity("ops-b.1", password)
    assert connack(site, half_made) == 0
    assert (await site.cli("env", "list", config=old_file)).code == 0
    shown = (await operators(site))["ops-b"]
    assert (shown["generation"], shown["pending"]) == (0, 1)

    again = await site.cli(
        "operator", "rotate-credentials", "ops-b", "--output", str(old_file), "--force"
    )
    assert again.code == 0, str(again)
    assert login(old_file).username == "ops-b.2"
    assert (await site.cli("env", "list", config=old_file)).code == 0
    assert connack(site, old) in REFUSED
    assert connack(site, half_made) in REFUSED
    shown = (await operators(site))["ops-b"]
    assert (shown["generation"], shown["pending"]) == (2, 0)


async def test_an_operator_rotates_its_own_file_in_place(site: Site) -> None:
    await site.start_controller()
    own = site.tmp / "own.toml"
    shutil.copy(await add_operator(site, "ops-c"), own)
    own.chmod(0o600)
    first = login(own)
    for generation in (1, 2):
        rotated = await site.cli(
            "operator", "rotate-credentials", "ops-c", "--output", str(own), "--force", config=own
        )
        assert rotated.code == 0, str(rotated)
        assert login(own).username == f"ops-c.{generation}"
        assert stat.S_IMODE(own.stat().st_mode) == 0o600
        assert (await site.cli("env", "list", config=own)).code == 0
    assert connack(site, first) in REFUSED
    assert list(site.tmp.glob(".own.toml.*")) == []  # the atomic replace left nothing

    # Only ops-c.2 is left, and the name is still taken: no environment may be ops-c.
    create = ("env", "create", "ops-c", "--stage", "dev", "--location", "x", "--purpose", "y")
    clash = await site.cli(*create, "--output", str(site.tmp / "env.toml"))
    assert clash.code == 1, str(clash)
    assert "client named 'ops-c' already" in clash.stderr


async def test_a_confirmation_without_the_sealed_token_is_refused(site: Site) -> None:
    await site.start_controller()
    old_file = await add_operator(site, "ops-d")
    pending, _ = await first_step_only(site, "ops-d")
    forged = OperatorRotateConfirm(name="ops-d", generation=1, proof="guess")
    settings = load_operator_settings({"config": str(site.admin_toml)})
    async with ControllerClient(settings.broker, settings.topic_root) as controller:
        reply = await controller.reply(forged, within=10)
    assert not reply.ok
    assert "does not match" in reply.error
    assert (await site.cli("env", "list", config=old_file)).code == 0
    assert pending.rotated_to == 1


async def test_with_rotate_after_old_operator_credentials_are_due_and_warned_about(
    site: Site,
) -> None:
    await site.start_controller("--rotate-after", "1")
    assert site.controller is not None
    await wait_for_output(site.controller, "operator credential due for rotation")
    listed = await site.cli("operator", "list")
    assert listed.code == 0, str(listed)
    admin_row = next(line for line in listed.stdout.splitlines() if line.startswith("admin "))
    assert admin_row.split()[-1] == "due"
    warnings = [
        line for line in site.controller.output().splitlines() if "due for rotation" in line
    ]
    assert len(warnings) == 1
    assert json.loads(warnings[0])["operator"] == "admin"


def test_a_due_operator_is_warned_about_once_a_day() -> None:
    clock = ManualClock(1_000_000.0)
    credentials = OperatorCredentials(BrokerAdmin(), TopicRoot("x/v1"), clock, rotate_after=3600.0)
    due = [OperatorInfo(name="ops", role="admin", age=7200.0, due=True)]
    fresh = [OperatorInfo(name="new", role="admin", age=10.0)]
    assert credentials.warn_due(due + fresh) == ["ops"]
    clock.advance(WARN_EVERY - 1)
    assert credentials.warn_due(due) == []
    clock.advance(1)
    assert credentials.warn_due(due) == ["ops"]
