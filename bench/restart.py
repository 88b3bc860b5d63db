"""Controller restart: with ``--count`` known environments, how long until every view is right.

A fleet of ``--count`` simulated agents (``--interval``, 10 s) and ``--paced`` more
environments whose heartbeats come at the same interval from one paced publisher
(bench._paced: a broker here holds at most ~20,000 connections) is judged online. The controller is
stopped (SIGKILL, then in a second round SIGTERM); while it is down ``--change`` agents stop
cleanly and as many are killed (their offline messages are retained by the broker). The
controller starts again; the time is from just before its exec to the moment the observer
holds a view for every environment that matches the truth (the changed ones offline with
reason ``shutdown`` or ``connection-lost``, every other one online). Goal: < 5 s with up to
10,000 environments, < 10 s with up to 30,000. Over a
watch window after that (default 35 s, longer than 3 x interval) it counts false
transitions (an unchanged environment's view not online), view messages re-published for
unchanged environments, and alerts: all should be 0.

    python -m bench.restart --count 10000
    python -m bench.restart --count 10000 --paced 20000    # 30,000 environments
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator

from bench._common import (
    BenchUnavailable,
    Controller,
    FleetWorker,
    Report,
    ViewObserver,
    add_common_arguments,
    bench_broker,
    run_main,
    scratch_dir,
)
from edgeplane.shared.topics import TopicRoot

__all__ = ["add_arguments", "main", "run"]

RIGHT_GOAL_S = 5.0  # up to 10,000 environments
RIGHT_GOAL_LARGE_S = 10.0  # up to 30,000
PACED_PREFIX = "paced"


def right_goal(envs: int) -> float:
    return RIGHT_GOAL_S if envs <= 10_000 else RIGHT_GOAL_LARGE_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--change", type=int, default=None, help="agents stopped (and killed)")
    parser.add_argument("--watch", type=float, default=None, help="seconds watched after")
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval")
    parser.add_argument(
        "--paced", type=int, default=0, help="environments beyond the fleet (paced heartbeats)"
    )


@contextlib.asynccontextmanager
async def paced(url: str, root: TopicRoot, envs: int, interval: float) -> AsyncIterator[None]:
    """bench._paced for ``envs`` environments, until its first round is sent."""
    if envs <= 0:
        yield
        return
    argv = ["--broker", url, "--topic-root", str(root), "--envs", str(envs)]
    argv += ["--interval", str(interval), "--prefix", PACED_PREFIX]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._paced",
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30 + 2 * interval)
        if not line or not json.loads(line).get("ready"):
            raise BenchUnavailable("the paced heartbeat publisher did not start")
        yield
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run(args: argparse.Namespace) -> Report:
    count = args.count
    change = args.change or max(1, min(100, count // 10))
    watch = args.watch or (5.0 if args.quick else 35.0)
    envs = count + args.paced
    params = {"count": count, "paced": args.paced, "envs": envs, "change": change}
    report = Report("restart", {**params, "watch": watch, "interval": args.interval})
    root = TopicRoot("bench/restart")
    rng = random.Random(23)
    picked = rng.sample(range(count), min(count, 4 * change))
    with scratch_dir("restart") as work, bench_broker(work) as broker:
        url = broker.url
        controller = Controller(url, root, work / "restart.db", work / "controller.log")
        fleet = FleetWorker(url, root, count, args.interval, work / "fleet.log")
        controller.start()
        try:
            status = root.controller_status()
            async with (
                ViewObserver(url, root).running(status) as observer,
                fleet,
                paced(url, root, args.paced, args.interval),
            ):
                await fleet.call("start", timeout=120 + count / 100)
                await observer.wait_until(
                    lambda: observer.online_count() >= envs, 120 + envs / 100, "views online"
                )
                controller.check_alive()
                for n, signum in enumerate((signal.SIGKILL, signal.SIGTERM)):
                    chosen = picked[2 * n * change : 2 * (n + 1) * change]
                    stops, kills = chosen[: len(chosen) // 2], chosen[len(chosen) // 2 :]
                    print(f"-- controller {signum.name}; {len(stops)} stopped, {len(kills)} killed")
                    await _one_round(
                        controller, fleet, observer, report, signum.name, stops, kills, watch
                    )
        finally:
            controller.stop()
    return report


async def _one_round(
    controller: Controller,
    fleet: FleetWorker,
    observer: ViewObserver,
    report: Report,
    name: str,
    stops: list[int],
    kills: list[int],
    watch: float,
) -> None:
    controller.stop(signal.Signals[name])
    mark = len(observer.history)
    alerts_before = len(observer.alerts)
    await fleet.call("stop", ids=stops)
    await fleet.call("kill", ids=kills)
    truth = {fleet.env(i): ("offline", "shutdown") for i in stops}
    truth |= {fleet.env(i): ("offline", "connection-lost") for i in kills}
    await asyncio.sleep(0.5)  # the wills of the killed ones reach the broker's retained store
    began = controller.start()

    def all_right() -> bool:
        for env, (status, reason) in truth.items():
            seen = observer.latest.get(env)
            if seen is None or (seen.status, seen.reason) != (status, reason):
                return False
        return all(
            seen.status == "online" for env, seen in observer.latest.items() if env not in truth
        )

    right_at = await observer.wait_until(all_right, 60, "every view right after the restart")
    births = [t for topic, payload, t in observer.extra if t > began and b'"online"' in payload]
    controller.check_alive()
    await asyncio.sleep(watch)
    after = observer.history[mark:]
    unchanged = [seen for seen in after if seen.env not in truth]
    false = [seen for seen in unchanged if seen.status != "online"]
    changed_msgs = [seen for seen in after if seen.env in truth]
    key = name.lower()
    report.note(f"{key}_time_to_every_view_right_s", right_at - began)
    if births:  # exec -> birth: start-up, loading the store, connecting, subscribing
        report.note(f"{key}_time_to_birth_s", min(births) - began)
    report.note(f"{key}_false_transitions", len(false))
    report.note(f"{key}_views_republished_for_unchanged_envs", len(unchanged))
    report.note(f"{key}_view_messages_for_changed_envs", len(changed_msgs))
    report.note(f"{key}_alerts", len(observer.alerts) - alerts_before)
    envs = len(observer.latest)
    report.goal(
        f"restart after {name}: every view right ({envs} environments)",
        right_at - began,
        right_goal(envs),
        "s",
        higher_is_better=False,
    )
    report.goal(
        f"restart after {name}: false transitions",
        len(false),
        0,
        "transitions",
        higher_is_better=False,
    )
    restarted = (await fleet.call("restart", ids=stops + kills))["t"]
    back = time.monotonic()
    await observer.wait_until(
        lambda: (
            all(observer.first_after(env, "online", back - 60) for env in restarted)
            and all(observer.latest[env].status == "online" for env in restarted)
        ),
        60,
        "the changed agents back online",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__)
    add_common_arguments(parser)
    add_arguments(parser)
    return run_main("restart", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
