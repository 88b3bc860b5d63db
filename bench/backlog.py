"""Backlog: the controller catching up on its persistent events session after a downtime.

The controller runs once, so the broker knows its events session (a fixed client id kept
beside the database, clean start off), and a probe event is stored. ``--envs`` environments
have a retained online status. The controller is stopped (SIGTERM); while it is down a raw
publisher (bench._flood, its own process) sends ``--events`` ``pong`` events round-robin over
those environments, which the broker queues in the controller's session. The controller
starts again and works off the queue, with the retained statuses of every environment
arriving on its other connection at the same time. Its RSS is sampled every 0.1 s
(psutil) from the exec to the last event stored; the events stored are counted in its
database (read-only SQLite, as it writes), and once more after it stopped: every one of
them must be there, once. Goals: peak RSS <= 150 MB, 0 events lost.

    python -m bench.backlog --events 200000 --envs 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Final

from bench._common import (
    BenchUnavailable,
    Controller,
    Report,
    RssSampler,
    ViewObserver,
    add_common_arguments,
    bench_broker,
    run_main,
    scratch_dir,
)
from edgeplane.shared.topics import TopicRoot

__all__ = ["add_arguments", "main", "run"]

RSS_GOAL_MB: Final = 150.0
POLL: Final = 0.25  # seconds between counts of the stored events


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=None, help="events queued while down")
    parser.add_argument("--envs", type=int, default=None, help="environments (retained status)")


async def run(args: argparse.Namespace) -> Report:
    events = args.events or (20_000 if args.quick else 200_000)
    envs = args.envs or min(max(args.count, 1), 10_000)
    report = Report("backlog", {"events": events, "envs": envs})
    root = TopicRoot("bench/backlog")
    src = f"backlog-{uuid.uuid4().hex[:6]}"
    with scratch_dir("backlog") as work, bench_broker(work) as broker:
        db = work / "backlog.db"
        controller = Controller(broker.url, root, db, work / "controller.log")
        try:
            async with ViewObserver(broker.url, root).running() as observer:
                await _first_run(controller, observer, broker.url, root, envs, src)
                controller.stop(signal.SIGTERM)
                print(f"-- controller down; {events} events queued in its session")
                sent = await _publish(broker.url, root, "events", envs, events, src, first_seq=2)
                report.note("publisher_events_per_s", events / (sent["t_acked"] - sent["t0"]))
                await _catch_up(controller, db, src, events, report)
        finally:
            controller.stop()
        stored = _count(db, src) - 1  # the probe
        report.note("events_stored_after_stop", stored)
        report.goal("events lost", events - stored, 0, "events", higher_is_better=False)
    return report


async def _first_run(
    controller: Controller,
    observer: ViewObserver,
    broker: str,
    root: TopicRoot,
    envs: int,
    src: str,
) -> None:
    """The controller's first run: its events session made, every environment online."""
    controller.start()
    await _publish(broker, root, "warm", envs, 0, src)
    await observer.wait_until(
        lambda: sum(1 for env in observer.latest if env.startswith("flood-")) >= envs,
        60 + envs / 100,
        "every environment's view",
    )
    await _publish(broker, root, "events", 1, 1, src)  # the probe: seq 1 of flood-00000
    await _until_stored(controller, controller.db, src, 1, 30)


async def _catch_up(
    controller: Controller, db: Path, src: str, events: int, report: Report
) -> None:
    began = controller.start()
    async with RssSampler(controller.pid) as sampler:
        done = await _until_stored(controller, db, src, events + 1, 120 + events / 500)
        hwm = controller.peak_rss()
    took = done - began
    report.note("catch_up_s", took)
    report.note("events_per_s", events / took)
    report.note("controller_rss_series_mb", sampler.series(began))
    report.note("controller_rss_peak_mb", sampler.peak / 2**20)
    report.note("controller_vmhwm_mb", hwm / 2**20)
    report.goal(
        f"controller peak RSS working off {events} queued events",
        max(hwm, sampler.peak) / 2**20,
        RSS_GOAL_MB,
        "MB",
        higher_is_better=False,
    )


async def _publish(
    broker: str, root: TopicRoot, phase: str, envs: int, count: int, src: str, first_seq: int = 1
) -> Any:
    argv = ["--broker", broker, "--topic-root", str(root), "--phase", phase, "--envs", str(envs)]
    argv += ["--count", str(count), "--src", src, "--first-seq", str(first_seq)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._flood", *argv, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise BenchUnavailable(f"the flood publisher failed (exit {proc.returncode})")
    return json.loads(out)


async def _until_stored(
    controller: Controller, db: Path, src: str, wanted: int, timeout: float
) -> float:
    """Wait until the controller's database holds ``wanted`` events of ``src``; the time."""
    deadline = time.monotonic() + timeout
    while (stored := _count(db, src)) < wanted:
        controller.check_alive()
        if time.monotonic() > deadline:
            raise BenchUnavailable(f"{stored} of {wanted} events stored after {timeout:g}s")
        await asyncio.sleep(POLL)
    return time.monotonic()


def _count(db: Path, src: str) -> int:
    """Events of ``src`` in the operations log (0 before the database exists)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            (count,) = conn.execute("SELECT COUNT(*) FROM oplog WHERE src = ?", (src,)).fetchone()
        except sqlite3.OperationalError:
            return 0  # not migrated yet
    return int(count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__)
    add_common_arguments(parser)
    add_arguments(parser)
    return run_main("backlog", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
