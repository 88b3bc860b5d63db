"""Ingest: how fast the controller judges heartbeats, and its status lag under a fleet.

Throughput. A raw publisher (bench._flood, its own process) floods K retained QoS 1
heartbeats over many environments (increasing ``seq``), then a sentinel: ``offline`` /
``shutdown`` for a marker environment whose ``bdseq`` is current. The controller handles
messages in order, so the moment its view of the marker turns offline is (within one view
publish) the moment it finished the flood; the bare subscriber (bench._bare: aiomqtt +
shared.codec.STATUS, nothing else) reports when it decoded the sentinel. Throughput is
K / (that moment - first byte of the flood); the two run one after the other on the same
broker, alternating, so neither steals the other's CPU. Goal: controller / bare >= 0.7.

Lag. A fleet of ``--count`` simulated agents at a 10 s interval (own process), the controller,
and an observer of the views. Once every view is online, probe agents are stopped cleanly,
killed and restarted a few at a time; each status lag is the time from the status being
published (the clean stop, the kill, the first online of the new connection) to the
observer receiving the changed retained view, which the controller publishes only after the
judgement is committed to its database. Goals: p99 < 100 ms, controller RSS < 150 MB.

    python -m bench.ingest --count 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench._common import (
    BenchUnavailable,
    Controller,
    FleetWorker,
    Report,
    RssSampler,
    ViewObserver,
    add_common_arguments,
    bench_broker,
    percentiles,
    run_main,
    sample_process,
    scratch_dir,
)
from bench._flood import MARKER
from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot

__all__ = ["add_arguments", "main", "run"]

RATIO_GOAL = 0.7
LAG_P99_GOAL_MS = 100.0
RSS_GOAL_MB = 150.0
# The sentinel's reason: a flood longer than 3 x the marker's interval to work off also
# turns the marker offline by silence ("timeout"), which must not count as the end.
SENTINEL = "shutdown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flood", type=int, default=None, help="heartbeats per flood")
    parser.add_argument("--flood-envs", type=int, default=None, help="environments flooded")
    parser.add_argument("--rounds", type=int, default=None, help="flood rounds for each side")
    parser.add_argument("--seconds", type=float, default=None, help="lag probing window")
    parser.add_argument("--probes", type=int, default=3, help="agents changed at a time")
    parser.add_argument("--interval", type=float, default=10.0, help="fleet heartbeat interval")
    parser.add_argument(
        "--part", choices=("all", "throughput", "lag"), default="all", help="measure only one part"
    )


async def run(args: argparse.Namespace) -> Report:
    flood = args.flood or (5_000 if args.quick else 60_000)
    envs = args.flood_envs or min(max(args.count, 10), 10_000)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (10.0 if args.quick else 90.0)
    report = Report(
        "ingest",
        {
            "count": args.count,
            "flood": flood,
            "flood_envs": envs,
            "rounds": rounds,
            "lag_seconds": seconds,
            "probes": args.probes,
            "interval": args.interval,
        },
    )
    with scratch_dir("ingest") as work:
        if args.part in ("all", "throughput"):
            with bench_broker(work) as broker:
                print(f"-- throughput: {flood} heartbeats, {envs} environments, {rounds} rounds")
                await throughput(broker, work, report, flood, envs, rounds)
        if args.part in ("all", "lag"):
            with bench_broker(work / "lag") as broker:
                print(f"-- status lag: {args.count} agents at {args.interval:g}s, {seconds:g}s")
                await lag(broker.url, work, report, args, seconds)
    return report


# --- throughput ----------------------------------------------------------------------------
async def _flood(broker: str, root: TopicRoot, phase: str, envs: int, count: int, rnd: int) -> Any:
    argv = ["--broker", broker, "--topic-root", str(root), "--phase", phase]
    argv += ["--envs", str(envs), "--count", str(count), "--round", str(rnd)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._flood", *argv, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise BenchUnavailable(f"the flood publisher failed (exit {proc.returncode})")
    return json.loads(out)


def _cpu(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


class BareSubscriber:
    """bench._bare in its own process; collects its marker lines."""

    def __init__(self, broker: str, root: TopicRoot) -> None:
        self.argv = ["-m", "bench._bare", "--broker", broker, "--topic-root", str(root)]
        self.lines: list[dict[str, Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> BareSubscriber:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, *self.argv, stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read(), name="bare-reader")
        await self.wait(lambda line: line.get("ready", False), 30, "the bare subscriber")
        return self

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            self.lines.append(json.loads(line))
            self._changed.set()

    async def wait(self, check: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if check(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or (self._proc is not None and self._proc.returncode is not None):
                raise BenchUnavailable(f"timed out waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))


async def throughput(
    mosquitto: MosquittoProcess, work: Path, report: Report, flood: int, envs: int, rounds: int
) -> None:
    broker = mosquitto.url
    broker_pid = mosquitto.pid or 0
    root = TopicRoot("bench/ingest")
    bare_rates: list[float] = []
    controller_rates: list[float] = []
    publisher_rates: list[float] = []
    cpu: dict[str, list[float]] = {"broker_bare": [], "bare": [], "broker_ctl": [], "ctl": []}
    peaks: list[int] = []  # the controller's RSS, sampled every 0.1 s through the flood
    hwm: list[int] = []  # its VmHWM after the flood (warm-up and start-up included)
    timeout = 60 + flood / 1000
    async with ViewObserver(broker, root).running() as observer:
        for rnd in range(rounds):
            async with BareSubscriber(broker, root) as bare:
                await _flood(broker, root, "warm", envs, flood, rnd)
                await bare.wait(
                    lambda line: line.get("status") == "online", timeout, "bare: warm-up"
                )
                before = _cpu(broker_pid), _cpu(bare.pid)
                sent = await _flood(broker, root, "flood", envs, flood, rnd)
                done = await bare.wait(
                    lambda line, t0=sent["t0"]: line.get("status") == "offline" and line["t"] > t0,
                    timeout,
                    "bare: the sentinel",
                )
                took = done["t"] - sent["t0"]
                cpu["broker_bare"].append(100 * (_cpu(broker_pid) - before[0]) / took)
                cpu["bare"].append(100 * (_cpu(bare.pid) - before[1]) / took)
            bare_rates.append(flood / took)
            publisher_rates.append(flood / (sent["t_acked"] - sent["t0"]))

            controller = Controller(broker, root, work / f"ingest-{rnd}.db", work / "ctl.log")
            controller.start()
            try:
                async with RssSampler(controller.pid) as sampler:
                    began = time.monotonic()
                    await _flood(broker, root, "warm", envs, flood, rnd)
                    await observer.wait_until(
                        lambda b=began: observer.first_after(MARKER, "online", b) is not None,
                        timeout,
                        "controller: the marker online after the warm-up",
                    )
                    controller.check_alive()
                    before = _cpu(broker_pid), _cpu(controller.pid)
                    sent = await _flood(broker, root, "flood", envs, flood, rnd)
                    t0 = sent["t0"]
                    t_done = await observer.wait_until(
                        lambda t0=t0: (
                            observer.first_after(MARKER, "offline", t0, SENTINEL) is not None
                        ),
                        timeout,
                        "controller: the marker offline after the flood",
                    )
                    seen = observer.first_after(MARKER, "offline", t0, SENTINEL)
                    took = (seen.t if seen else t_done) - t0
                    controller_rates.append(flood / took)
                    cpu["broker_ctl"].append(100 * (_cpu(broker_pid) - before[0]) / took)
                    cpu["ctl"].append(100 * (_cpu(controller.pid) - before[1]) / took)
                    rss, _ = controller.sample()
                    peaks.append(max(sampler.peak_between(t0, time.monotonic()), rss))
                    hwm.append(controller.peak_rss())
            finally:
                controller.stop()
            print(
                f"  round {rnd + 1}: bare {bare_rates[-1]:,.0f} msg/s, controller "
                f"{controller_rates[-1]:,.0f} msg/s, broker took {publisher_rates[-1]:,.0f} msg/s,"
                f" controller RSS {rss / 2**20:.1f} MB after, {peaks[-1] / 2**20:.1f} MB peak;"
                f" CPU % of a core: bare "
                f"{cpu['bare'][-1]:.0f} (broker {cpu['broker_bare'][-1]:.0f}), controller "
                f"{cpu['ctl'][-1]:.0f} (broker {cpu['broker_ctl'][-1]:.0f})",
                flush=True,
            )
    bare_rate = statistics.median(bare_rates)
    controller_rate = statistics.median(controller_rates)
    report.note("bare_msgs_per_s", {"median": bare_rate, "rounds": bare_rates})
    report.note("controller_msgs_per_s", {"median": controller_rate, "rounds": controller_rates})
    report.note("broker_accepts_msgs_per_s", {"median": statistics.median(publisher_rates)})
    report.note(
        "cpu_percent_of_core_during_flood", {k: statistics.median(v) for k, v in cpu.items()}
    )
    report.note("controller_rss_peak_in_flood_mb", [round(p / 2**20, 1) for p in peaks])
    report.note("controller_vmhwm_mb", [round(p / 2**20, 1) for p in hwm])
    ratio = controller_rate / bare_rate
    report.note("controller_over_bare", ratio)
    report.goal("ingest ratio controller/bare", ratio, RATIO_GOAL, "x", higher_is_better=True)
    report.goal(
        "controller peak RSS in the flood",
        max(hwm) / 2**20,
        RSS_GOAL_MB,
        "MB",
        higher_is_better=False,
    )


# --- status lag ----------------------------------------------------------------------------
async def lag(
    broker: str, work: Path, report: Report, args: argparse.Namespace, seconds: float
) -> None:
    root = TopicRoot("bench/lag")
    count = args.count
    controller = Controller(broker, root, work / "lag.db", work / "lag-controller.log")
    fleet = FleetWorker(broker, root, count, args.interval, work / "lag-fleet.log")
    controller.start()
    samples: list[tuple[int, float]] = []
    try:
        async with ViewObserver(broker, root).running() as observer, fleet:
            sampler = asyncio.create_task(_sample(controller, samples), name="sampler")
            began = time.monotonic()
            started = await fleet.call("start", timeout=120 + count / 100)
            report.note("fleet_connected_s", started["seconds"])
            at = await observer.wait_until(
                lambda: observer.online_count() >= count, 120 + count / 100, "every view online"
            )
            report.note("all_views_online_s", at - began)
            controller.check_alive()
            settle = min(15.0, 2 * args.interval)
            await asyncio.sleep(settle)  # let the first heartbeats of every agent come in
            _, cpu_before = controller.sample()
            window_start = time.monotonic()
            lags = await _probe(fleet, observer, args.probes, seconds, count)
            window = time.monotonic() - window_start
            _, cpu_after = controller.sample()
            controller.check_alive()
            sampler.cancel()
            fleet_rss, _ = sample_process(fleet.pid)
            false_alerts = len(observer.alerts)
    finally:
        controller.stop()
    every = [ms for kind in lags.values() for ms in kind]
    for kind, values in lags.items():
        report.note(f"lag_ms_{kind}", percentiles(values))
    overall = percentiles(every)
    report.note("lag_ms", overall)
    report.note("controller_cpu_percent_of_core", 100 * (cpu_after - cpu_before) / window)
    peak = controller.max_rss
    report.note("controller_rss_max_mb", peak / 2**20)
    report.note("controller_rss_samples", len(samples))
    report.note("fleet_rss_mb", fleet_rss / 2**20)
    report.note("alerts_seen", false_alerts)
    report.goal(
        f"status lag p99 ({count} agents at {args.interval:g}s)",
        overall.get("p99"),
        LAG_P99_GOAL_MS,
        "ms",
        higher_is_better=False,
    )
    report.goal("controller max RSS", peak / 2**20, RSS_GOAL_MB, "MB", higher_is_better=False)


async def _sample(controller: Controller, samples: list[tuple[int, float]]) -> None:
    while True:
        with contextlib.suppress(Exception):
            samples.append(controller.sample())
        await asyncio.sleep(0.5)


async def _probe(
    fleet: FleetWorker, observer: ViewObserver, probes: int, seconds: float, count: int
) -> dict[str, list[float]]:
    """Stop or kill ``probes`` agents, wait for their views offline, restart them, wait for
    their views online; again and again for ``seconds``. Lags in milliseconds, by kind."""
    lags: dict[str, list[float]] = {"stop": [], "kill": [], "restart": []}
    order = list(range(count))
    random.Random(7).shuffle(order)
    end = time.monotonic() + seconds
    cycle = 0
    while time.monotonic() < end:
        ids = [order[(cycle * probes + k) % count] for k in range(probes)]
        ids = list(dict.fromkeys(ids))
        how = "stop" if cycle % 2 == 0 else "kill"
        ended = (await fleet.call(how, ids=ids))["t"]
        await _collect(observer, ended, "offline", lags[how])
        restarted = (await fleet.call("restart", ids=ids))["t"]
        await _collect(observer, restarted, "online", lags["restart"])
        cycle += 1
        await asyncio.sleep(0.1)
    return lags


async def _collect(
    observer: ViewObserver, stamps: dict[str, float | None], status: str, into: list[float]
) -> None:
    known = {env: t for env, t in stamps.items() if t is not None}

    def all_seen() -> bool:
        return all(observer.first_after(env, status, t) is not None for env, t in known.items())

    await observer.wait_until(all_seen, 30, f"views {status} for {sorted(known)}")
    for env, t in known.items():
        seen = observer.first_after(env, status, t)
        if seen is not None:
            into.append(1000 * (seen.t - t))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    add_common_arguments(parser)
    add_arguments(parser)
    return run_main("ingest", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
