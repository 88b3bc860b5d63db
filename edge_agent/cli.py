"""``edge-agent``: the runtime agent (``run``), its checks (``doctor``) and the fleet
simulator (``simulate``).

Exit status: 0 after a clean stop (or a retirement), 2 for a bad flag, setting, config file,
secrets file or state directory (one line on stderr naming it), 1 for any other refusal,
such as a state directory whose environment was retired. ``edge-agent doctor``: 0 when no
check failed, 1 when one did, 2 for a bad flag or setting (its own module:
:mod:`edge_agent.doctor`, never loaded by ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from edgeplane.edge_agent import config
from edgeplane.edge_agent.errors import OutboxError, SimulatorMissing, StateDirError
from edgeplane.shared import __version__
from edgeplane.shared.errors import EdgeplaneError, SettingsError

__all__ = ["main"]

if TYPE_CHECKING:
    from edgeplane.edge_agent.agent import AgentExecutor, ExecutorFactory
    from edgeplane.edge_agent.events import EventSink
    from edgeplane.edge_agent.secrets import Secrets

PROG = "edge-agent"
SIMULATOR_MODULE = "edgeplane.edge_agent.simulator.cli"
SIMULATOR_EXTRA = "pip install 'edgeplane[sim]'"  # what the simulator needs beyond the agent
EXECUTOR_MODULE = "edgeplane.edge_agent.execution.executor"
EXECUTOR_RECORD = "executor.json"  # what the executor keeps in the state dir


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the terminal's width: left to find it out, argparse imports
    shutil (and its compression modules: 0.7 MB an agent would keep for nothing)."""

    def __init__(self, prog: str, **options: Any) -> None:
        options.setdefault("width", _terminal_width() - 2)  # argparse's own margin
        super().__init__(prog, **options)


def _terminal_width() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``edge-agent: ...``) and exit status 2."""

    help_hint = ""  # the --help that tells about the flags at fault

    def __init__(self, *args: Any, **options: Any) -> None:
        options.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **options)

    def error(self, message: str) -> NoReturn:
        hint = self.help_hint or f"{self.prog} --help"
        self.exit(2, f"{PROG}: {message} (see {hint})\n")


class SimulatorModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load_simulator() -> SimulatorModule:
    """The simulator's command line; :class:`SimulatorMissing` when the simulator, or a
    package it needs (those of the ``[sim]`` extra), is not installed."""
    try:
        module: SimulatorModule = importlib.import_module(SIMULATOR_MODULE)
    except ModuleNotFoundError as exc:
        missing = exc.name
        if missing is None or not _installed_by_the_sim_extra(missing):
            raise
        raise SimulatorMissing(
            f"the fleet simulator is not part of this installation (no {missing}); "
            f"install it with: {SIMULATOR_EXTRA}"
        ) from exc
    return module


def _installed_by_the_sim_extra(module: str) -> bool:
    """The simulator itself, or a package from outside edgeplane (the extra's)."""
    simulator = module == SIMULATOR_MODULE or SIMULATOR_MODULE.startswith(f"{module}.")
    return simulator or module.partition(".")[0] != "edgeplane"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the simulator's flags are loaded only when ``command`` is ``simulate``,
    so that ``edge-agent run`` never imports it."""
    parser = _Parser(prog=PROG, description="The edgeplane agent of one runtime target.")
    if command in ("run", "simulate", "doctor"):
        # Unknown flags after a command are reported by this parser, not the command's.
        parser.help_hint = f"{PROG} {command} --help"
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run the agent: announce presence over MQTT and answer commands",
        description="Run the agent. Every flag can also come from an EDGEPLANE_* "
        "environment variable or the --config file (flag > environment > file > default).",
    )
    config.add_arguments(run)
    run.set_defaults(handler=_run)
    doctor = commands.add_parser(
        "doctor",
        help="check this gateway in the documented order: process, network, credentials, "
        "resources, workflows",
        description="Check what the agent needs, in the documented troubleshooting order, "
        "with the settings of `edge-agent run` (flags, EDGEPLANE_* variables, --config). "
        "Exit status 1 when a check failed. It never takes over a running agent's session.",
    )
    config.add_arguments(doctor)
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--bundle",
        metavar="FILE",
        default=None,
        help="also write FILE, a tar.gz (mode 0600) for support: the report, the settings "
        "with every secret removed, the outbox's size, versions",
    )
    doctor.set_defaults(handler=_doctor)
    simulate = commands.add_parser(
        "simulate", help="run many simulated agents from one process (benchmarks)"
    )
    simulate.set_defaults(handler=_simulate)
    if command == "simulate":
        _load_simulator().add_arguments(simulate)
    return parser


def _run(args: argparse.Namespace) -> int:
    settings = config.load_config(args)
    from edgeplane.edge_agent.lean import defer_unused_imports

    defer_unused_imports()  # before paho is imported: see edgeplane.edge_agent.lean
    # Imported here: `edge-agent --help` and `simulate` do not pay for paho and psutil.
    from edgeplane.edge_agent.agent import Agent
    from edgeplane.edge_agent.credentials import ensure_box_key
    from edgeplane.edge_agent.instance_lock import hold_agent_lock
    from edgeplane.edge_agent.outbox import Outbox
    from edgeplane.edge_agent.secrets import load_secrets
    from edgeplane.edge_agent.state import (
        RECENT_LOG,
        BdseqStore,
        OverridesStore,
        check_not_retired,
    )
    from edgeplane.edge_agent.waker import Waker, stop_signals
    from edgeplane.shared.logs import configure_stdlib_logging

    check_not_retired(settings.state_dir)
    # Loading registers every value with the log redactor: before the first log line.
    secrets = None if settings.secrets_file is None else load_secrets(settings.secrets_file)
    try:
        store = BdseqStore(settings.state_dir)
        lock = hold_agent_lock(settings.state_dir, settings.env_id)  # held until exit
        overrides = OverridesStore(settings.state_dir)
        in_force = config.with_overrides(settings, overrides.load())
        outbox = Outbox(settings.state_dir, settings.env_id)
        box_key = ensure_box_key(settings.state_dir)  # the state dir exists now
    except (StateDirError, OutboxError) as exc:
        raise SettingsError(f"--state-dir: {exc}") from exc
    # The level the controller set last, if it did, beats the local one.
    recent = str(settings.state_dir / RECENT_LOG)  # what `doctor --bundle` sends support
    configure_stdlib_logging(settings.log_format, in_force.log_level, recent=recent)
    waker = Waker()
    try:
        agent = Agent(
            settings,
            store=store,
            waker=waker,
            outbox=outbox,
            overrides=overrides,
            executor=_executor_factory(settings, secrets),
            secrets=secrets,
            box_key=box_key,
        )
        with waker.on_signals(), stop_signals(agent.request_stop):
            return agent.run()
    finally:
        waker.close()
        lock.release()


def _executor_factory(
    settings: config.AgentConfig, secrets: Secrets | None
) -> ExecutorFactory | None:
    """How the agent builds its executor, or None when this installation has none (the
    agent then answers deployments with a refusal saying so)."""
    if importlib.util.find_spec(EXECUTOR_MODULE) is None:
        return None
    from edgeplane.edge_agent.execution.ondemand import OnDemandExecutor

    def build(sink: EventSink, endpoints: Mapping[str, str]) -> AgentExecutor:
        def create() -> AgentExecutor:
            module = importlib.import_module(EXECUTOR_MODULE)
            executor: AgentExecutor = module.Executor(
                settings.env_id,
                state_dir=settings.state_dir,
                models_dir=settings.models_dir,
                secrets=secrets,
                endpoints=endpoints,
                sink=sink,
            )
            return executor

        record = settings.state_dir / EXECUTOR_RECORD
        return OnDemandExecutor(create, needed_now=record.exists())

    return build


def _doctor(args: argparse.Namespace) -> int:
    settings = config.load_config(args)
    # Imported here: the running agent never loads the doctor.
    from edgeplane.edge_agent.doctor.command import run_doctor

    return run_doctor(settings, as_json=args.json, bundle=args.bundle)


def _simulate(args: argparse.Namespace) -> int:
    return _load_simulator().run(args)


def _command_of(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_of(argv))
        args = parser.parse_args(argv)
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except EdgeplaneError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SettingsError) else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
