"""A site's broker made by ``broker init`` with the real programs around it, for the
end-to-end tests of enrollment and rotation: a controller logged in as
``edgeplane-controller``, operator commands run as the user runs them (``--config
admin.toml``), agents started with nothing but their bootstrap file, and raw clients that
watch, record every message, and try logins."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeplane.controller.core.acl import Acl, Role
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc, start_proc
from tests.support.site import (
    BAD_CREDENTIALS,
    NOT_AUTHORIZED,
    DynsecAdmin,
    Identity,
    NoSession,
    Received,
    SiteBroker,
    SiteClient,
)

__all__ = ["Run", "Site", "connack", "is_offline", "is_online", "read_toml", "refused_within"]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@dataclass
class Site:
    broker: SiteBroker
    tmp: Path
    procs: list[Proc]
    controller: Proc | None = None

    @property
    def root(self) -> TopicRoot:
        return self.broker.root

    @property
    def admin_toml(self) -> Path:
        return self.broker.result.layout.admin_toml

    async def start_controller(self, *extra: str) -> None:
        config = self.broker.result.layout.controller_toml
        args = ["controller", "run", "--config", str(config), "--log-format", "json", *extra]
        self.controller = await start_proc("edgeplane.controller", args, self.tmp / "ctl.log")
        self.procs.append(self.controller)
        with self.broker.client(self.broker.admin) as watcher:
            watcher.subscribe(self.root.controller_status())
            await asyncio.to_thread(watcher.wait_for, is_online, 20.0)

    async def kill_controller(self) -> None:
        """SIGKILL the controller, and wait until the broker published its will."""
        assert self.controller is not None
        with self.broker.client(self.broker.admin) as watcher:
            watcher.subscribe(self.root.controller_status())
            await self.controller.kill()
            await asyncio.to_thread(watcher.wait_for, is_offline, 20.0)
        self.controller = None

    async def cli(self, *args: str, config: Path | None = None) -> Run:
        argv = [sys.executable, "-m", "edgeplane.controller", *args]
        argv += ["--config", str(config or self.admin_toml)]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return Run(process.returncode, out.decode(), err.decode())

    async def start_agent(
        self, bootstrap: Path, name: str = "agent", extra: Sequence[str] = ()
    ) -> Proc:
        state = {"XDG_STATE_HOME": str(self.tmp / f"{name}-state")}
        args = ["run", "--config", str(bootstrap), "--log-format", "json", *extra]
        proc = await start_proc("edgeplane.edge_agent", args, self.tmp / f"{name}.log", state)
        self.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def watch(self, *filters: str) -> Iterator[SiteClient]:
        with self.broker.client(self.broker.admin) as client:
            assert client.subscribe(*filters) == [1] * len(filters)
            yield client

    def recorder(self) -> SiteClient:
        """A client that may read every topic, the plugin's own included."""
        role = Role(
            "test-recorder",
            (
                Acl("subscribeLiteral", "#"),
                Acl("subscribeLiteral", "$CONTROL/#"),
                Acl("publishClientReceive", "$CONTROL/#"),  # never allowed by default
            ),
        )
        with DynsecAdmin(self.broker) as admin:
            admin.add_role(role)
            identity = admin.add_client("test-recorder", role.rolename)
        client = self.broker.client(identity)
        client.__enter__()
        assert client.subscribe("#", "$CONTROL/#") == [1, 1]
        return client


def is_online(message: Received) -> bool:
    return bool(message.payload) and json.loads(message.payload).get("status") == "online"


def is_offline(message: Received) -> bool:
    return bool(message.payload) and json.loads(message.payload).get("status") == "offline"


def read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)


def connack(site: Site, identity: Identity) -> int:
    client = site.broker.client(identity)
    try:
        code = client.connect()
    except NoSession:
        return -1
    client.close()
    return code


def refused_within(site: Site, identity: Identity, timeout: float) -> None:
    """Wait (polling a login, as a returning gateway would) until the broker refuses it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if connack(site, identity) in (BAD_CREDENTIALS, NOT_AUTHORIZED):
            return
        time.sleep(0.2)  # polling the broker's answer, not synchronising on an event
    raise AssertionError(f"{identity.username} could still log in after {timeout}s")
