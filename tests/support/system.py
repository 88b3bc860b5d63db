"""A whole edgeplane system for end-to-end tests: a controller process, agents with their
models dirs, secrets files and state dirs under the test's temporary directory, and the
operator CLI run as subprocesses, all against a real broker and the test's own topic root.

A probe subscribed to everything under the root records every message, so a test waits for
the event it expects (never a bare sleep) and can look at every payload afterwards::

    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-a")
        await system.start_agent("edge-a", models={"detector": ["2.2.0"]})
        result = await system.cli("deploy", str(workflow), "--env", "edge-a", "--wait")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.rpc import TERMINAL_STATES
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import PUBLIC_KEY, opened_json, write_key_file
from tests.support.probe import Probe, Received, open_probe
from tests.support.procs import Proc, start_proc

__all__ = [
    "END_STATES",
    "Agent",
    "AgentFiles",
    "CliResult",
    "LinkProxy",
    "System",
    "alive",
    "open_link_proxy",
    "open_system",
    "retained_now",
    "wait_for_file",
    "wait_for_output",
    "wait_until",
    "write_script",
    "write_workflow",
]

END_STATES: frozenset[str] = TERMINAL_STATES  # a deployment's end states


@dataclass(frozen=True)
class CliResult:
    """One operator command as the user ran it: its exit code and both output streams."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"not JSON on stdout:\n{self}") from None

    def __str__(self) -> str:
        command = " ".join(self.argv[2:])
        return f"$ {command}\nexit {self.code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


@dataclass(frozen=True)
class AgentFiles:
    """Where one agent keeps its things, all under the test's temporary directory."""

    state_dir: Path
    models_dir: Path
    secrets_file: Path
    config_file: Path


@dataclass
class Agent:
    env: str
    proc: Proc
    files: AgentFiles


@dataclass
class System:
    """One test's edgeplane: its processes, its probe on everything under ``root``, and
    every operator command it ran (``cli_log``)."""

    broker: MosquittoProcess
    root: TopicRoot
    base: Path
    procs: list[Proc]
    probe: Probe
    controller: Proc | None = None
    db: Path = field(init=False)
    earlier: list[Received] = field(default_factory=list)  # seen before a broker restart
    cli_log: list[CliResult] = field(default_factory=list)  # every operator command run
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def __post_init__(self) -> None:
        self.db = self.base / "controller.db"

    # processes ---------------------------------------------------------------------------
    async def start_controller(self, *extra: str) -> Proc:
        """``edgeplane controller run`` on this root (JSON logs at debug level, so a test can
        read every line), once its birth is out."""
        after = self.probe.mark()
        write_key_file(self.db.parent / "command-key")  # the default place: beside the db
        args = ["controller", "run", "--broker", self.broker.url, "--db", str(self.db)]
        args += ["--topic-root", str(self.root), "--log-format", "json", "--log-level", "debug"]
        log = self.base / f"controller-{len(self.procs)}.log"
        proc = await start_proc("edgeplane.controller", [*args, *extra], log)
        self.procs.append(proc)
        self.controller = proc
        await self.probe.wait_json(
            self.root.controller_status(), after=after, status="online", timeout=20
        )
        return proc

    def agent_files(self, env: str, state: str | None = None) -> AgentFiles:
        home = self.base / f"agent-{state or env}"
        return AgentFiles(
            state_dir=home / "state",
            models_dir=home / "models",
            secrets_file=home / "secrets.env",
            config_file=home / "agent.toml",
        )

    async def start_agent(
        self,
        env: str,
        *,
        models: Mapping[str, Iterable[str]] | None = None,
        secrets: Mapping[str, str] | None = None,
        secrets_mode: int = 0o600,
        endpoints: Mapping[str, str] | None = None,
        state: str | None = None,
        interval: float = 0.5,
        extra: Iterable[str] = (),
        wait: str | None = "view",
        broker_url: str | None = None,
    ) -> Agent:
        """``edge-agent run`` for ``env``; its models dir, secrets file and ``[endpoints]``
        config are written first when given. ``wait``: ``"view"`` until the controller judges
        it online, ``"status"`` until the agent's own online message, None not at all.
        ``broker_url``: connect elsewhere (through a :class:`LinkProxy`)."""
        files = self.agent_files(env, state)
        files.state_dir.parent.mkdir(parents=True, exist_ok=True)
        args = ["run", "--env-id", env, "--broker", broker_url or self.broker.url]
        args += ["--topic-root", str(self.root), "--state-dir", str(files.state_dir)]
        args += ["--heartbeat-interval", str(interval), "--command-key", PUBLIC_KEY]
        args += ["--log-format", "json", "--log-level", "debug"]
        if models is not None:
            write_models(files.models_dir, models)
            args += ["--models-dir", str(files.models_dir)]
        if secrets is not None:
            write_secrets(files.secrets_file, secrets, secrets_mode)
            args += ["--secrets-file", str(files.secrets_file)]
        if endpoints is not None:
            write_endpoints(files.config_file, endpoints)
            args += ["--config", str(files.config_file)]
        after = self.probe.mark()
        log = self.base / f"agent-{env}-{len(self.procs)}.log"
        proc = await start_proc("edgeplane.edge_agent", [*args, *extra], log)
        self.procs.append(proc)
        if wait == "view":
            await self.probe.wait_json(
                self.root.view(env), after=after, status="online", timeout=20
            )
        elif wait == "status":
            await self.probe.wait_json(
                self.root.status(env), after=after, status="online", timeout=20
            )
        return Agent(env, proc, files)

    async def stop_broker(self) -> None:
        """Stop the (private, persistent) broker; what the probe saw stays in ``messages``."""
        await self._stack.aclose()
        self.earlier += self.probe.messages
        self.broker.stop()

    async def start_broker(self) -> None:
        """Start the broker again (same port, same persistence) and reconnect the probe."""
        self.broker.start()
        self._stack = contextlib.AsyncExitStack()
        self.probe = await self._stack.enter_async_context(
            open_probe(self.broker.url, self.root.everything())
        )

    async def online(self, env: str, *controller_flags: str, **agent: Any) -> Agent:
        """A controller, the record of ``env`` and its agent, judged online."""
        await self.start_controller(*controller_flags)
        await self.create_env(env)
        return await self.start_agent(env, **agent)

    # the operator CLI --------------------------------------------------------------------
    async def cli(self, *args: str, timeout: float = 60.0) -> CliResult:
        """``python -m controller ARGS --broker URL --topic-root R``, to its exit."""
        argv = [sys.executable, "-m", "edgeplane.controller", *args]
        argv += ["--broker", self.broker.url, "--topic-root", str(self.root)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            out, err = await process.communicate()
            raise AssertionError(
                f"{' '.join(args)} did not exit within {timeout}s; output:\n"
                f"{out.decode(errors='replace')}{err.decode(errors='replace')}"
            ) from None
        code = process.returncode
        assert code is not None
        result = CliResult(argv, code, out.decode(errors="replace"), err.decode(errors="replace"))
        self.cli_log.append(result)
        return result

    async def cli_json(self, *args: str) -> Any:
        """An operator command with ``--json`` that must succeed; its decoded output."""
        result = await self.cli(*args, "--json")
        assert result.code == 0, str(result)
        return result.json()

    async def create_env(self, env: str, *extra: str) -> None:
        result = await self.cli(
            "env", "create", env, "--stage", "dev", "--location", "lab", "--purpose", "e2e", *extra
        )
        assert result.code == 0, str(result)
        assert env in result.stdout, str(result)

    async def deploy(self, workflow: Path, env: str, *flags: str, timeout: float = 60) -> CliResult:
        return await self.cli("deploy", str(workflow), "--env", env, *flags, timeout=timeout)

    async def deployments(self) -> list[dict[str, Any]]:
        """Every deployment the controller knows, newest first."""
        found: list[dict[str, Any]] = await self.cli_json("deployments", "list")
        return found

    async def latest_deployment(self, env: str) -> dict[str, Any]:
        mine = [d for d in await self.deployments() if d["env"] == env]
        assert mine, f"no deployment to {env} known to the controller"
        return mine[0]

    async def show_deployment(self, dep: str) -> dict[str, Any]:
        shown: dict[str, Any] = await self.cli_json("deployments", "show", dep)
        return shown

    async def logged_events(self, env: str) -> list[dict[str, Any]]:
        """The controller's operations log for ``env`` (``events --env ENV --json``), as the
        events themselves, oldest first."""
        entries = await self.cli_json("events", "--env", env)
        return [entry["event"] for entry in entries]

    async def wait_deployment(
        self, dep: str, states: Iterable[str] = END_STATES, timeout: float = 30
    ) -> dict[str, Any]:
        """Ask the controller (``deployments show``) until ``dep`` is in one of ``states``."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        shown: dict[str, Any] = {}
        while time.monotonic() < deadline:
            shown = await self.show_deployment(dep)
            if shown["state"] in wanted:
                return shown
            await asyncio.sleep(0.3)  # polling a query: the controller has no push for it
        raise AssertionError(f"deployment {dep} not in {sorted(wanted)} within {timeout}s: {shown}")

    async def start_cli(self, *args: str) -> Proc:
        """An operator command that runs on (``deploy --wait``, ``events --follow``), its
        stdout and stderr into one log; a test watches it with :func:`wait_for_output`."""
        args = (*args, "--broker", self.broker.url, "--topic-root", str(self.root))
        log = self.base / f"cli-{args[0]}-{len(self.procs)}.log"
        proc = await start_proc("edgeplane.controller", list(args), log)
        self.procs.append(proc)
        return proc

    # what went over MQTT -----------------------------------------------------------------
    @property
    def messages(self) -> list[Received]:
        """Every message seen under the root, across broker restarts."""
        return [*self.earlier, *self.probe.messages]

    def events(self, env: str, dep: str | None = None) -> list[dict[str, Any]]:
        """The events ``env`` published, each (src, seq) once, in order of arrival."""
        seen: set[tuple[str, int]] = set()
        found = []
        for data in _json_on(self.messages, self.root.events(env)):
            key = (str(data.get("src", "")), int(data.get("seq", -1)))
            if key in seen:
                continue
            seen.add(key)
            if dep is None or data.get("dep") == dep:
                found.append(data)
        return found

    def commands(self, env: str) -> list[dict[str, Any]]:
        """Every command published to ``env``, the command inside when it is signed with
        the tests' key (garbage included, as ``{"raw": ...}``)."""
        return [
            _decoded(opened_json(m.payload)) for m in self.messages if m.topic == self.root.cmd(env)
        ]

    async def barrier(self) -> None:
        """A round trip through the broker: whatever was published before this call (and
        acknowledged) has reached the probe when it returns."""
        mark = self.probe.mark()
        topic = f"{self.root}/test-barrier/{time.monotonic_ns()}"
        await self.probe.publish(topic, b"")
        await self.probe.wait_for(lambda m: m.topic == topic, after=mark, what="the barrier")

    async def wait_event(
        self, env: str, type_: str, *, after: int = 0, timeout: float = 30, **fields: Any
    ) -> dict[str, Any]:
        return await self.probe.wait_json(
            self.root.events(env), after=after, timeout=timeout, type=type_, **fields
        )

    def script(self, name: str, code: str) -> Path:
        return write_script(self.base / "scripts" / f"{name}.py", code)

    def workflow(self, name: str, data: Mapping[str, Any]) -> Path:
        return write_workflow(self.base / "workflows" / f"{name}.json", data)


@contextlib.asynccontextmanager
async def open_system(
    broker: MosquittoProcess, root: TopicRoot, base: Path, procs: list[Proc]
) -> AsyncIterator[System]:
    stack = contextlib.AsyncExitStack()
    probe = await stack.enter_async_context(open_probe(broker.url, root.everything()))
    system = System(broker, root, base, procs, probe, _stack=stack)
    try:
        yield system
    finally:
        await system._stack.aclose()


class LinkProxy:
    """A TCP relay between agents and the broker that a test breaks on purpose.

    :meth:`cut` breaks every link and refuses new ones until :meth:`restore`.
    :meth:`blackhole` makes the links open now drop everything the broker sends (its
    PUBACKs, its PINGRESPs) while still passing on what the agent sends: the agent's
    events reach the broker, the agent never hears so, times out and sends them again on a
    new link. New links relay normally.
    """

    def __init__(self, broker: MosquittoProcess) -> None:
        self.broker = broker
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._blackholed: set[asyncio.StreamWriter] = set()  # agent-side writers
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        self._blackholed |= self._writers

    async def cut(self) -> None:
        """Break every link and refuse new ones, until :meth:`restore`."""
        await self.close()
        self._server = None

    async def restore(self) -> None:
        """Relay again, on the same port."""
        await self.start()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
        self._writers.clear()
        self._blackholed.clear()
        self._tasks.clear()

    async def _accept(
        self, agent_in: asyncio.StreamReader, agent_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(agent_out)
        try:
            broker_in, broker_out = await asyncio.open_connection(
                self.broker.host, self.broker.port
            )
        except OSError:
            agent_out.close()
            return
        self._writers.add(broker_out)
        await asyncio.gather(
            self._pipe(agent_in, broker_out, None),
            self._pipe(broker_in, agent_out, agent_out),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        agent_side: asyncio.StreamWriter | None,
    ) -> None:
        try:
            while data := await source.read(65_536):
                if agent_side is not None and agent_side in self._blackholed:
                    continue
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()


@contextlib.asynccontextmanager
async def open_link_proxy(broker: MosquittoProcess) -> AsyncIterator[LinkProxy]:
    proxy = LinkProxy(broker)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


# files ------------------------------------------------------------------------------------
def write_models(models_dir: Path, models: Mapping[str, Iterable[str]]) -> None:
    """A models dir as the contract has it: ``DIR/{name}/{version}/`` (with a weights file)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    for name, versions in models.items():
        for version in versions:
            folder = models_dir / name / version
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "weights.bin").write_bytes(b"\x00" * 16)


def write_secrets(path: Path, secrets: Mapping[str, str], mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}={value}\n" for name, value in secrets.items()))
    path.chmod(mode)


def write_endpoints(path: Path, endpoints: Mapping[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["[endpoints]", *(f"{name} = {json.dumps(url)}" for name, url in endpoints.items())]
    path.write_text("\n".join(lines) + "\n")


def write_workflow(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def write_script(path: Path, code: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    return path


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Until ``predicate()`` holds: for what has no message to await (a file a step wrote,
    a process gone)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def wait_for_file(
    path: Path, timeout: float = 20, check: Callable[[Path], bool] | None = None
) -> None:
    """Until ``path`` exists (and ``check`` holds): what a step or service wrote."""
    await wait_until(
        lambda: path.exists() and (check is None or check(path)),
        f"{path} to appear" + (" and hold" if check else ""),
        timeout,
    )


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def wait_for_output(proc: Proc, text: str, timeout: float = 20) -> None:
    """Until ``text`` shows in what ``proc`` printed (a long-running command's progress)."""
    deadline = time.monotonic() + timeout
    while text not in proc.output():  # a log file has no event to await
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not printed within {timeout}s:\n{proc.output()}")
        await asyncio.sleep(0.05)


async def retained_now(broker: MosquittoProcess, *topics: str) -> dict[str, bytes]:
    """The retained message of each topic that has one now. A fresh subscriber gets the
    retained messages before anything published after its subscription; a sentinel it
    publishes itself marks the end of them."""
    async with open_probe(broker.url, *topics) as probe:
        sentinel = f"sentinel/{os.getpid()}/{time.monotonic_ns()}"
        await probe.subscribe(sentinel)
        await probe.publish(sentinel, b"end")
        await probe.wait_for(lambda m: m.topic == sentinel, what="the sentinel")
        return {m.topic: m.payload for m in probe.messages if m.retain and m.payload}


def _json_on(messages: Iterable[Received], topic: str) -> list[dict[str, Any]]:
    found = []
    for message in messages:
        if message.topic == topic and message.payload:
            data = _decoded(message.payload)
            if "raw" not in data:
                found.append(data)
    return found


def _decoded(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError:
        return {"raw": payload}
    return data if isinstance(data, dict) else {"raw": payload}
