"""``edgeplane up``: a broker, the controller and the default cloud environment's agent, in
the foreground until Ctrl-C or SIGTERM.

The broker, in order of preference:

1. ``--broker URL``: that broker; ``up`` neither starts nor stops it.
2. a broker already listening on ``127.0.0.1:PORT`` (1883 unless ``--port``): used as it is.
3. a private mosquitto (on PATH or in /usr/sbin) with the project's config and its data
   directory in the state directory.
4. the embedded broker of the ``iotcore`` package, where there is no mosquitto at all.

``--broker-kind mosquitto|embedded`` skips the search and insists on one (never reusing a
broker found on the port).

Supervision: the controller and the agent run as child processes in their own process groups
(Ctrl-C reaches only ``up``, which stops them in order). A child that exits on its own is
reported and restarted with capped, jittered backoff; one that exits with status 2 (a bad
setting: restarting cannot help) makes ``up`` stop everything and exit 1. A broker that ``up``
started and that dies is restarted the same way. On Ctrl-C or SIGTERM: agent, then controller
(SIGTERM, up to 10 s, then SIGKILL), then the broker ``up`` started; exit status 0.

While running, ``STATE_DIR/up.json`` names the broker URL and the pid of every process ``up``
runs (removed on exit); ``STATE_DIR/up.lock`` keeps a second ``up`` off the same state dir.
An ``up`` killed outright (SIGKILL) cannot stop its children; the embedded broker exits by
itself, and the next ``up`` on the same state dir stops whatever else its up.json names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from edgeplane.controller.errors import BrokerStartError, ControllerError
from edgeplane.shared.errors import SettingsError

if TYPE_CHECKING:
    from edgeplane.controller.broker.process import BrokerProcess

__all__ = [
    "DEFAULT_ENV_ID",
    "BrokerPlan",
    "add_parser",
    "choose_broker",
    "default_state_dir",
]

DEFAULT_ENV_ID = "default-cloud"
LOCAL_HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0
BrokerKind = Literal["auto", "mosquitto", "embedded"]
Plan = Literal["given", "existing", "mosquitto", "embedded"]


def default_state_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/edgeplane``, or ``~/.local/state/edgeplane``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgeplane"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return port


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a broker, the controller and the default cloud agent in the foreground",
        description="Run a broker (found, given or started), the controller and the "
        f"{DEFAULT_ENV_ID!r} environment's agent until Ctrl-C or SIGTERM.",
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="use this broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead of "
        "finding or starting one",
    )
    parser.add_argument(
        "--topic-root",
        metavar="ROOT",
        default="edgeplane/v1",
        help="root of every edgeplane topic (default: edgeplane/v1)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        help="where the controller database, the agent state and a started broker's data "
        "live (default: $XDG_STATE_HOME/edgeplane or ~/.local/state/edgeplane)",
    )
    parser.add_argument(
        "--broker-kind",
        choices=["auto", "mosquitto", "embedded"],
        default="auto",
        help="auto: a broker already on the port, else mosquitto, else the embedded one; "
        "mosquitto or embedded: start that one (default: auto)",
    )
    parser.add_argument(
        "--port",
        metavar="PORT",
        type=_port,
        default=1883,
        help="loopback MQTT port to find or start a broker on (default: 1883)",
    )
    parser.add_argument(
        "--ws-port",
        metavar="PORT",
        type=_port,
        default=9001,
        help="MQTT-over-WebSockets port of a started mosquitto, for browser dashboards; "
        "0 for none (default: 9001)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        metavar="SECONDS",
        type=_interval,
        default=10.0,
        help="seconds between the default agent's heartbeats (default: 10)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default="auto",
        help="log format of up and its children (default: console at a terminal, else json)",
    )
    parser.set_defaults(handler=run)


# --- choosing the broker (pure) -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BrokerPlan:
    plan: Plan
    url: str


def choose_broker(
    *,
    given: str | None,
    kind: BrokerKind,
    port: int,
    port_in_use: bool,
    mosquitto_found: bool,
    embedded_found: bool,
) -> BrokerPlan:
    """Which broker ``up`` uses, or a :class:`BrokerStartError` saying why there is none."""
    local = f"mqtt://{LOCAL_HOST}:{port}"
    if given is not None:
        return BrokerPlan("given", given)
    if kind == "auto" and port_in_use:
        return BrokerPlan("existing", local)
    if port_in_use:
        raise BrokerStartError(
            f"cannot start {kind} on {LOCAL_HOST}:{port}: the port is in use "
            f"(use --broker {local} to use what listens there, or another --port)"
        )
    if kind in ("auto", "mosquitto") and mosquitto_found:
        return BrokerPlan("mosquitto", local)
    if kind == "mosquitto":
        raise BrokerStartError("--broker-kind mosquitto: no mosquitto on PATH or in /usr/sbin")
    if embedded_found:
        return BrokerPlan("embedded", local)
    raise BrokerStartError(
        "no broker: nothing listens on "
        f"{LOCAL_HOST}:{port}, mosquitto is not installed and the iotcore package is missing"
    )


# --- the session ---------------------------------------------------------------------------
@dataclass
class Child:
    """A supervised child process: the controller or the agent."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches `up` only; it stops us in order
        )

    async def stop(self, grace: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, up to ``grace`` seconds for a clean stop, then SIGKILL."""
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            _say(f"{self.name} did not stop within {grace:g}s: killing it")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()


class ChildFailed(ControllerError):
    """A child exited in a way restarting cannot fix."""


@dataclass
class Session:
    args: argparse.Namespace
    state_dir: Path
    topic_root: str
    plan: BrokerPlan
    broker: BrokerProcess | None = None  # set when up starts the broker itself
    children: list[Child] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "broker": self.plan.url,
            "broker_kind": self.plan.plan,
            "broker_pid": self.broker.pid if self.broker is not None else None,
            "topic_root": self.topic_root,
            "state_dir": str(self.state_dir),
            **{f"{child.name}_pid": child.pid for child in self.children},
        }

    def write_status(self) -> None:
        path = self.state_dir / "up.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2) + "\n")
        tmp.replace(path)


def _say(text: str) -> None:
    """A line for the person at the terminal (stdout), flushed at once."""
    print(f"edgeplane up: {text}", flush=True)


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_path = state_dir / "up.lock"
    handle: IO[str] = lock_path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ControllerError(
                f"another `edgeplane up` is running with state dir {state_dir}"
            ) from None
        yield
    finally:
        handle.close()


def _given_broker(args: argparse.Namespace) -> str | None:
    """The ``--broker`` URL, normalised, or None; a bad one is a :class:`SettingsError`."""
    from edgeplane.shared.broker_url import BrokerUrl
    from edgeplane.shared.errors import InvalidBrokerUrl

    if args.broker is None:
        if args.port == 0:
            raise SettingsError("--port: 0 is not a port a broker can be found or started on")
        return None
    try:
        return str(BrokerUrl.parse(args.broker))
    except InvalidBrokerUrl as exc:
        raise SettingsError(f"--broker: {exc}") from exc


def _ours(pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` is alive and one of the processes of an ``up`` on ``state_dir``
    (its command line names the state dir: a recycled pid does not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(state_dir).encode() in cmdline


def _stop_leftovers(state_dir: Path) -> None:
    """Stop what an earlier ``up`` that was killed outright left running on this state dir.

    Called with the lock held, so no live ``up`` owns them. Without this, a second agent with
    the same identity would fight the leftover one for its session.
    """
    try:
        earlier = json.loads((state_dir / "up.json").read_text())
    except (OSError, ValueError):
        return
    for name in ("agent", "controller", "broker"):
        pid = earlier.get(f"{name}_pid")
        if not isinstance(pid, int) or not _ours(pid, state_dir):
            continue
        _say(f"stopping the {name} (pid {pid}) left running by an earlier edgeplane up")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _ours(pid, state_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _ours(pid, state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    (state_dir / "up.json").unlink(missing_ok=True)


def _plan(args: argparse.Namespace, given: str | None) -> BrokerPlan:
    from edgeplane.controller.broker.embedded import embedded_available
    from edgeplane.controller.broker.mosquitto import find_mosquitto
    from edgeplane.controller.broker.process import port_open

    return choose_broker(
        given=given,
        kind=args.broker_kind,
        port=args.port,
        port_in_use=given is None and port_open(LOCAL_HOST, args.port),
        mosquitto_found=find_mosquitto() is not None,
        embedded_found=embedded_available(),
    )


def _make_broker(session: Session) -> BrokerProcess:
    from edgeplane.controller.broker.embedded import EmbeddedBroker
    from edgeplane.controller.broker.mosquitto import MosquittoProcess, packaged_mosquitto_config
    from edgeplane.controller.broker.process import port_bindable

    args = session.args
    if session.plan.plan == "mosquitto":
        ws_port: int | None = args.ws_port or None
        if ws_port is not None and not port_bindable(LOCAL_HOST, ws_port):
            _say(f"port {ws_port} is in use: no WebSockets listener (choose one with --ws-port)")
            ws_port = None
        if ws_port is not None:
            session.extras.append(f"MQTT over WebSockets at ws://{LOCAL_HOST}:{ws_port}/")
        return MosquittoProcess(
            packaged_mosquitto_config(),
            session.state_dir / "mosquitto",
            host=LOCAL_HOST,
            port=args.port,
            websockets_port=ws_port,
        )
    v311_port: int | None = args.port + 1 if args.port < 65535 else None
    if v311_port is not None and not port_bindable(LOCAL_HOST, v311_port):
        v311_port = None
    if v311_port is not None:
        session.extras.append(f"MQTT 3.1.1 for older tools at mqtt://{LOCAL_HOST}:{v311_port}")
    return EmbeddedBroker(
        session.state_dir / "embedded-broker", host=LOCAL_HOST, port=args.port, v311_port=v311_port
    )


def _children(session: Session) -> list[Child]:
    args = session.args
    env = dict(os.environ)
    if args.log_format != "auto":
        env["EDGEPLANE_LOG_FORMAT"] = args.log_format
    agent_state = session.state_dir / "agents" / DEFAULT_ENV_ID
    models = session.state_dir / "models"  # DIR/{name}/{version}/ for the cloud agent
    models.mkdir(parents=True, exist_ok=True)
    agent_state.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    controller = Child(
        "controller",
        [
            *(python, "-m", "edgeplane.controller", "controller", "run"),
            *("--broker", session.plan.url),
            *("--db", str(session.state_dir / "controller.db")),
            *("--topic-root", session.topic_root),
        ],
        env,
    )
    agent = Child(
        "agent",
        [
            *(python, "-m", "edgeplane.edge_agent", "run"),
            *("--env-id", DEFAULT_ENV_ID),
            *("--broker", session.plan.url),
            *("--state-dir", str(agent_state)),
            *("--models-dir", str(models)),
            *("--heartbeat-interval", f"{args.heartbeat_interval:g}"),
            *("--topic-root", session.topic_root),
        ],
        env,
    )
    return [controller, agent]


def _banner(session: Session) -> str:
    from edgeplane.shared.broker_url import BrokerUrl

    url = BrokerUrl.parse(session.plan.url)
    how = {
        "given": "given with --broker; not started or stopped by up",
        "existing": "already listening on this machine; used as it is, not stopped by up",
        "mosquitto": "a private mosquitto started by up, data in "
        f"{session.state_dir / 'mosquitto'}",
        "embedded": "the embedded broker (iotcore/rumqttd) started by up"
        + (": no mosquitto found" if session.args.broker_kind == "auto" else "")
        + "; it delivers at most 100 retained messages per new QoS 1 subscription",
    }[session.plan.plan]
    pids = ", ".join(f"{c.name} pid {c.pid}" for c in session.children)
    tls = " --capath /etc/ssl/certs" if url.tls else ""
    lines = [
        "edgeplane is up",
        f"  broker      {session.plan.url}  ({how})",
        *(f"              {extra}" for extra in session.extras),
        f"  topic root  {session.topic_root}",
        f"  state dir   {session.state_dir}",
        f"  running     {pids}; agent {DEFAULT_ENV_ID!r}",
        f"  models      {session.state_dir / 'models'}/NAME/VERSION/ (the cloud agent's)",
        "  watch it    mosquitto_sub -V mqttv5 "
        f"-h {url.host} -p {url.port}{tls} -t '{session.topic_root}/view/#' -v",
        "              edgeplane status --broker "
        f"{session.plan.url} --topic-root {session.topic_root}",
        "  stop        Ctrl-C (or SIGTERM)",
    ]
    return "\n".join(lines)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


async def _supervise(child: Child, session: Session) -> None:
    """Restart ``child`` with backoff whenever it exits on its own (it is already started)."""
    from edgeplane.shared.backoff import Backoff

    backoff = Backoff(initial=1.0, cap=30.0)
    while True:
        assert child.process is not None
        code = await child.process.wait()
        if code == 2:
            raise ChildFailed(
                f"{child.name} exited with status 2 (a bad setting; see its message above): "
                "not restarting it"
            )
        if time.monotonic() - child.started_at > 60:
            backoff.reset()  # it ran for a while: this is a new failure, not a crash loop
        delay = backoff.next_delay()
        child.restarts += 1
        _say(
            f"{child.name} (pid {child.pid}) {_exit_text(code)} unexpectedly: "
            f"restarting it in {delay:.1f}s (restart #{child.restarts})"
        )
        await asyncio.sleep(delay)
        await child.start()
        session.write_status()


async def _supervise_broker(session: Session) -> None:
    """Restart a broker ``up`` started if it dies (mosquitto keeps its persisted state)."""
    from edgeplane.shared.backoff import Backoff

    broker = session.broker
    assert broker is not None
    backoff = Backoff(initial=1.0, cap=30.0)
    while True:
        await asyncio.sleep(0.5)
        if broker.running:
            continue
        delay = backoff.next_delay()
        _say(f"the broker exited unexpectedly (log: {broker.log_path}): restarting it")
        try:
            await asyncio.to_thread(broker.start)
        except BrokerStartError as exc:
            _say(f"could not restart the broker: {exc}; next try in {delay:.1f}s")
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        session.write_status()


async def _run_session(session: Session) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks: list[asyncio.Task[None]] = []
    exit_code = 0
    try:
        if session.broker is not None:
            await asyncio.to_thread(session.broker.start)
        if stop.is_set():  # Ctrl-C while the broker was starting
            return 0
        session.children = _children(session)
        for child in session.children:
            await child.start()
        session.write_status()
        print(_banner(session), flush=True)
        if session.broker is not None:
            tasks.append(asyncio.create_task(_supervise_broker(session), name="watch-broker"))
        for child in session.children:
            tasks.append(
                asyncio.create_task(_supervise(child, session), name=f"watch-{child.name}")
            )
        stopper = asyncio.create_task(stop.wait(), name="wait-for-signal")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is not stopper and task.exception() is not None:
                _say(str(task.exception()))
                exit_code = 1
        if exit_code == 0:
            _say("stopping (agent, controller, then the broker up started)")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _stop_all(session)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return exit_code


async def _stop_all(session: Session) -> None:
    for child in reversed(session.children):  # the agent first, then the controller
        await child.stop()
    if session.broker is not None:
        await asyncio.to_thread(session.broker.stop)
    with contextlib.suppress(FileNotFoundError):
        (session.state_dir / "up.json").unlink()


def run(args: argparse.Namespace) -> int:
    from edgeplane.shared.logs import configure_logging
    from edgeplane.shared.topics import TopicRoot

    configure_logging(args.log_format)
    try:
        topic_root = str(TopicRoot(args.topic_root))
    except ValueError as exc:
        raise SettingsError(f"--topic-root: {exc}") from exc
    given = _given_broker(args)
    state_dir: Path = (args.state_dir or default_state_dir()).expanduser().resolve()
    with _state_lock(state_dir):
        _stop_leftovers(state_dir)
        plan = _plan(args, given)
        session = Session(args, state_dir, topic_root, plan)
        if plan.plan in ("mosquitto", "embedded"):
            session.broker = _make_broker(session)
        elif plan.plan == "existing":
            _say(f"a broker is already listening on {plan.url}: using it")
        return asyncio.run(_run_session(session))
