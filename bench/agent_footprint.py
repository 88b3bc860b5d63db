"""Agent footprint: one real ``edge-agent run`` at a 10 s interval, its memory and CPU.

The agent runs as a gateway runs it: ``pip install edgeplane`` (the wheel of this checkout,
no extras) into a virtualenv of its own, started by its ``edge-agent`` script
(``--agent-from installed``, the default; it needs the package index, or pip's cache, for
paho-mqtt, msgspec, psutil and packaging). ``--agent-from checkout`` runs ``python -m
edgeplane.edge_agent`` of this interpreter instead (an editable install pays for its
import hook and whatever else its site-packages load: about 0.8 MB more).

Max RSS is the kernel's high-water mark (VmHWM) over the whole run, start-up included; CPU
is CPU seconds / wall seconds over a window (``--seconds``) that starts once the agent's
first heartbeat is seen. ``python -c pass`` of the same interpreter is measured in the same
run as the floor any Python process pays. Goals: RSS <= 25 MB, CPU <= 0.5 % of a core.

    python -m bench.agent_footprint --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import venv
from pathlib import Path

import psutil

from bench._common import (
    BenchUnavailable,
    RealAgent,
    Report,
    ViewObserver,
    add_common_arguments,
    bench_broker,
    run_main,
    scratch_dir,
)
from edgeplane.shared.topics import TopicRoot

__all__ = ["add_arguments", "main", "python_pass_rss", "run"]

RSS_GOAL_MB = 25.0
CPU_GOAL_PERCENT = 0.5


REPO = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=None, help="CPU window (default 60)")
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval")
    parser.add_argument(
        "--agent-from",
        choices=("installed", "checkout"),
        default="installed",
        help="the agent as `pip install edgeplane` installs it (default), or this checkout's",
    )


def install_agent(work: Path) -> Path:
    """A virtualenv in ``work`` with this checkout's wheel installed, no extras; its
    python."""
    wheels = work / "wheel"
    _pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(REPO))
    home = work / "agent-venv"
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    _pip(str(python), "install", *map(str, wheels.glob("edgeplane-*.whl")))
    return python


def _pip(python: str, *args: str) -> None:
    argv = [python, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchUnavailable(
            f"pip {args[0]} failed (no package index? try --agent-from checkout): "
            f"{done.stderr.strip()[-500:]}"
        )


def python_pass_rss(python: str = sys.executable) -> int:
    """Max RSS in bytes of an empty ``python -c`` with ``python``.

    The child prints its own high-water mark (VmHWM, which starts afresh at exec) as its
    only statement: a child's ru_maxrss would also count this process's pages that it
    shared until the exec."""
    code = "print(open('/proc/self/status').read())"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchUnavailable("cannot read the VmHWM of python -c")


def _peak_rss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


async def run(args: argparse.Namespace) -> Report:
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    report = Report(
        "agent_footprint",
        {"interval": args.interval, "seconds": seconds, "agent_from": args.agent_from},
    )
    root = TopicRoot("bench/footprint")
    with scratch_dir("footprint") as work, bench_broker(work) as broker:
        if args.agent_from == "installed":
            python = str(install_agent(work))
            command: tuple[str, ...] = (str(Path(python).parent / "edge-agent"),)
        else:
            python = sys.executable
            command = (python, "-m", "edgeplane.edge_agent")
        agent = RealAgent(broker.url, root, "footprint-0", args.interval, work, command=command)
        status = root.status(agent.env)
        async with ViewObserver(broker.url, root).running(status) as observer:
            agent.start()
            try:
                await observer.wait_until(
                    lambda: any(topic == status for topic, _, _ in observer.extra),
                    30,
                    "the agent's first heartbeat",
                )
                proc = psutil.Process(agent.pid)
                began_cpu = proc.cpu_times()
                began = time.monotonic()
                rss_samples = []
                while time.monotonic() - began < seconds:
                    await asyncio.sleep(min(1.0, seconds / 10))
                    rss_samples.append(proc.memory_info().rss)
                    if agent.process is None or agent.process.poll() is not None:
                        raise BenchUnavailable(f"the agent exited; see {agent.log}")
                ended_cpu = proc.cpu_times()
                wall = time.monotonic() - began
                peak = _peak_rss(agent.pid)
                total_cpu = ended_cpu.user + ended_cpu.system
                heartbeats = sum(1 for topic, _, t in observer.extra if topic == status)
            finally:
                agent.close()
        floor = python_pass_rss(python)
    cpu_window = max(0.0, total_cpu - began_cpu.user - began_cpu.system) / wall
    report.note("agent_max_rss_mb", peak / 2**20)
    report.note("agent_rss_at_end_mb", rss_samples[-1] / 2**20)
    report.note("python_c_pass_max_rss_mb", floor / 2**20)
    report.note("agent_over_python_c_pass", peak / floor)
    report.note("agent_startup_cpu_s", began_cpu.user + began_cpu.system)
    report.note("agent_cpu_percent_of_core", 100 * cpu_window)
    report.note("window_s", wall)
    report.note("heartbeats_seen", heartbeats)
    report.goal("agent max RSS", peak / 2**20, RSS_GOAL_MB, "MB", higher_is_better=False)
    report.goal(
        f"agent CPU at {args.interval:g}s interval",
        100 * cpu_window,
        CPU_GOAL_PERCENT,
        "% of a core",
        higher_is_better=False,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_footprint", description=__doc__)
    add_common_arguments(parser, default_count=1)
    add_arguments(parser)
    return run_main("agent_footprint", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
