"""Detection: how fast a dead or frozen agent's view turns offline.

Killed (goal p99 < 500 ms): simulated agents of a ``--count`` fleet at a 10 s interval are
aborted (socket closed without DISCONNECT: the broker publishes the will at once), and real
``edge-agent run`` processes get SIGKILL. Each detection time is from just before the kill
to the observer receiving the view ``offline``.

Frozen (goal: offline within 3 x interval + 0.5 s): simulated agents at a 1 s interval are
frozen (heartbeats stop, the connection stays up) and real agents get SIGSTOP. Each
detection time is from the agent's last heartbeat (its publish for simulated agents, its
arrival at the observer for real ones) to the view ``offline``; the report gives its
distribution minus 3 x interval.

    python -m bench.detection --count 10000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys

from bench._common import (
    Controller,
    FleetWorker,
    RealAgent,
    Report,
    ViewObserver,
    add_common_arguments,
    bench_broker,
    percentiles,
    run_main,
    scratch_dir,
)
from edgeplane.shared.topics import TopicRoot

__all__ = ["add_arguments", "main", "run"]

KILL_P99_GOAL_MS = 500.0
FREEZE_MARGIN_GOAL_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=None, help="simulated agents killed")
    parser.add_argument("--real", type=int, default=None, help="real edge-agent processes")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for real/frozen agents")
    parser.add_argument("--frozen", type=int, default=None, help="simulated agents frozen")
    parser.add_argument("--freeze-interval", type=float, default=1.0, help="their interval")


async def run(args: argparse.Namespace) -> Report:
    kills = args.kills or (10 if args.quick else 200)
    real = args.real or (2 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 3)
    frozen = args.frozen or (5 if args.quick else 20)
    interval = args.freeze_interval
    report = Report(
        "detection",
        {
            "count": args.count,
            "kills": min(kills, args.count),
            "real_agents": real,
            "rounds": rounds,
            "frozen": frozen,
            "freeze_interval": interval,
        },
    )
    root = TopicRoot("bench/detection")
    with scratch_dir("detection") as work, bench_broker(work) as broker:
        url = broker.url
        controller = Controller(url, root, work / "detection.db", work / "controller.log")
        controller.start()
        agents = [RealAgent(url, root, f"real-{i}", interval, work) for i in range(real)]
        statuses = [root.status(a.env) for a in agents]
        big = FleetWorker(url, root, args.count, 10.0, work / "fleet.log")
        small = FleetWorker(url, root, frozen, interval, work / "frozen.log", prefix="frz")
        try:
            async with ViewObserver(url, root).running(*statuses) as observer, big, small:
                await big.call("start", timeout=120 + args.count / 100)
                await small.call("start")
                for agent in agents:
                    agent.start()
                total = args.count + frozen + real
                await observer.wait_until(
                    lambda: observer.online_count() >= total,
                    120 + args.count / 100,
                    "every view online",
                )
                controller.check_alive()
                print("-- kill -9: simulated agents (will at once)", flush=True)
                sim_kill = await _kill_simulated(big, observer, min(kills, args.count))
                print("-- kill -9: real edge-agent processes", flush=True)
                real_kill = await _kill_real(agents, observer, rounds)
                print(f"-- frozen: simulated agents at {interval:g}s", flush=True)
                sim_frozen = await _freeze_simulated(small, observer, frozen, rounds)
                print(f"-- frozen: real edge-agent processes (SIGSTOP) at {interval:g}s")
                real_frozen = await _freeze_real(agents, observer, rounds)
                controller.check_alive()
        finally:
            for agent in agents:
                agent.close()
            controller.stop()
    limit = 3 * interval
    report.note("kill_simulated_ms", percentiles(sim_kill))
    report.note("kill_real_ms", percentiles(real_kill))
    every_kill = percentiles(sim_kill + real_kill)
    report.note("kill_ms", every_kill)
    report.note("frozen_sim_minus_3x_interval_s", percentiles([d - limit for d in sim_frozen]))
    report.note("frozen_real_minus_3x_interval_s", percentiles([d - limit for d in real_frozen]))
    report.goal(
        "kill -9 -> offline p99",
        every_kill.get("p99"),
        KILL_P99_GOAL_MS,
        "ms",
        higher_is_better=False,
    )
    worst = max(sim_frozen + real_frozen, default=None)
    report.goal(
        f"frozen -> offline, worst (interval {interval:g}s)",
        worst,
        limit + FREEZE_MARGIN_GOAL_S,
        "s",
        higher_is_better=False,
    )
    return report


async def _wait_status(
    observer: ViewObserver, stamps: dict[str, float], status: str, timeout: float = 30
) -> dict[str, float]:
    """Seconds from each stamp to the first view with ``status`` after it."""

    def seen_all() -> bool:
        return all(observer.first_after(e, status, t) is not None for e, t in stamps.items())

    await observer.wait_until(seen_all, timeout, f"views {status}: {sorted(stamps)[:5]}...")
    found = {}
    for env, t in stamps.items():
        seen = observer.first_after(env, status, t)
        if seen is not None:
            found[env] = seen.t - t
    return found


async def _kill_simulated(fleet: FleetWorker, observer: ViewObserver, kills: int) -> list[float]:
    ids = random.Random(11).sample(range(fleet.count), kills)
    lags: list[float] = []
    for start in range(0, kills, 5):
        stamps = (await fleet.call("kill", ids=ids[start : start + 5]))["t"]
        lags += [1000 * s for s in (await _wait_status(observer, stamps, "offline")).values()]
        await asyncio.sleep(0.05)
    return lags


async def _kill_real(agents: list[RealAgent], observer: ViewObserver, rounds: int) -> list[float]:
    lags: list[float] = []
    for _ in range(rounds):
        stamps = {}
        for agent in agents:
            stamps[agent.env] = agent.signal(signal.SIGKILL)
            await asyncio.sleep(0.1)
        lags += [1000 * s for s in (await _wait_status(observer, stamps, "offline")).values()]
        for agent in agents:
            if agent.process is not None:
                agent.process.wait()
        restarted = {agent.env: agent.start() for agent in agents}
        await _wait_status(observer, restarted, "online")
    return lags


async def _freeze_simulated(
    fleet: FleetWorker, observer: ViewObserver, count: int, rounds: int
) -> list[float]:
    """Seconds from each frozen agent's last heartbeat to its view offline."""
    detections: list[float] = []
    rng = random.Random(13)
    for _ in range(rounds):
        last_beats: dict[str, float] = {}
        for i in range(count):
            await asyncio.sleep(rng.uniform(0, 0.2))  # freeze at every phase of the beat
            answer = await fleet.call("freeze", ids=[i])
            last_beats.update({e: b for e, b in answer["last_beat"].items() if b is not None})
        detections += list((await _wait_status(observer, last_beats, "offline")).values())
        thawed = (await fleet.call("thaw", ids=list(range(count))))["t"]
        await _wait_status(observer, thawed, "online")
    return detections


async def _freeze_real(agents: list[RealAgent], observer: ViewObserver, rounds: int) -> list[float]:
    """Seconds from each stopped agent's last heartbeat (as received) to its view offline."""
    detections: list[float] = []
    rng = random.Random(17)
    for _ in range(rounds):
        stopped = {}
        for agent in agents:
            await asyncio.sleep(rng.uniform(0, 0.3))
            stopped[agent.env] = agent.signal(signal.SIGSTOP)
        offline = await _wait_status(observer, stopped, "offline")
        for env, after in offline.items():
            went = stopped[env] + after
            beats = [t for topic, _, t in observer.extra if f"/env/{env}/" in topic and t < went]
            if beats:
                detections.append(went - max(beats))
        resumed = {}
        for agent in agents:
            resumed[agent.env] = agent.signal(signal.SIGCONT)
        await _wait_status(observer, resumed, "online")
    return detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__)
    add_common_arguments(parser)
    add_arguments(parser)
    return run_main("detection", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
