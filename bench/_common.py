"""What every benchmark shares: the private broker, the controller process, the fleet worker,
a view observer, percentiles, the PASS/MISS lines and the JSON results.

Every process (broker, controller, fleet, observer) is separate so they do not share a GIL;
times are ``time.monotonic()``, which on Linux is one system-wide clock, so times taken in
different processes on this machine compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiomqtt
import msgspec
import psutil

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.command_signature import CommandSigner
from edgeplane.shared.messages import EnvView
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "BENCH_DIR",
    "BENCH_SIGNER",
    "RESULTS_DIR",
    "BenchUnavailable",
    "Controller",
    "FleetWorker",
    "RealAgent",
    "Report",
    "RssSampler",
    "ViewObserver",
    "add_common_arguments",
    "bench_broker",
    "machine",
    "percentiles",
    "raise_open_files",
    "run_main",
    "sample_process",
    "scratch_dir",
    "write_bench_key",
]

# The benchmarks' controllers sign with this key (written to their key file) and their
# agents trust it, as an enrolled fleet does.
_BENCH_SEED: Final = b"edgeplane-bench-command-key-0001"
BENCH_SIGNER: Final = CommandSigner(_BENCH_SEED)


def write_bench_key(path: Path) -> Path:
    """The controller's key file (mode 0600) holding :data:`BENCH_SIGNER`'s key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(base64.b64encode(_BENCH_SEED).decode("ascii") + "\n")
    return path


BENCH_DIR: Final = Path(__file__).resolve().parent
RESULTS_DIR: Final = BENCH_DIR / "results"
BROKER_CONFIG: Final = BENCH_DIR / "mosquitto.conf"
_VIEW: Final = msgspec.json.Decoder(EnvView)


class BenchUnavailable(Exception):
    """The benchmark could not run at all (no mosquitto, a process that would not start)."""


# --- the machine ----------------------------------------------------------------------------
def raise_open_files() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    version = "not found"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=5)
        version = (out.stdout or out.stderr).splitlines()[0].strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "mosquitto": version,
        "kernel": platform.release(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """count, p50, p90, p99 and max of ``values`` (nearest rank), in the values' unit."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index]

    return {
        "count": len(ordered),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1],
    }


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"edgeplane-bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def bench_broker(workdir: Path) -> Iterator[MosquittoProcess]:
    """A private mosquitto on a free loopback port, with the bench config."""
    broker = MosquittoProcess(BROKER_CONFIG, workdir / "mosquitto")
    if broker.binary is None:
        raise BenchUnavailable("no mosquitto binary found (make mosquitto installs it)")
    try:
        broker.start()
    except Exception as exc:
        raise BenchUnavailable(f"cannot start mosquitto: {exc}") from exc
    try:
        yield broker
    finally:
        broker.stop()


# --- results ---------------------------------------------------------------------------------
@dataclass
class Report:
    """One benchmark's figures: printed as they come, written as JSON at the end."""

    name: str
    params: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    def note(self, key: str, value: Any) -> None:
        self.figures[key] = value
        print(f"  {key}: {_short(value)}", flush=True)

    def goal(
        self, what: str, measured: float | None, goal: float, unit: str, *, higher_is_better: bool
    ) -> None:
        """A figure next to its goal, the ratio (measured / goal) and PASS or MISS."""
        if measured is None:
            ok, ratio = False, None
        else:
            ok = measured >= goal if higher_is_better else measured <= goal
            ratio = measured / goal if goal else None
        sign = ">=" if higher_is_better else "<="
        shown = "n/a" if measured is None else f"{measured:.4g}"
        ratio_text = "" if ratio is None else f"  (measured/goal {ratio:.2f})"
        print(
            f"  {'PASS' if ok else 'MISS'}  {what}: {shown} {unit}, goal {sign} {goal:g} {unit}"
            f"{ratio_text}",
            flush=True,
        )
        self.verdicts.append(
            {
                "what": what,
                "measured": measured,
                "goal": goal,
                "unit": unit,
                "goal_is": sign,
                "ratio": ratio,
                "pass": ok,
            }
        )

    def write(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = directory / f"{self.name}-{stamp}.json"
        body = {
            "bench": self.name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.orig_argv),
            "machine": machine(),
            "params": self.params,
            "figures": self.figures,
            "verdicts": self.verdicts,
        }
        path.write_text(json.dumps(body, indent=2, default=str) + "\n")
        print(f"  results written to {path}", flush=True)
        return path


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    return str(value)


# --- the controller ----------------------------------------------------------------------------
class Controller:
    """``python -m controller controller run`` as a child process, with its RSS and CPU."""

    def __init__(self, broker: str, root: TopicRoot, db: Path, log: Path) -> None:
        self.broker = broker
        self.root = root
        self.db = db
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.max_rss = 0

    def start(self) -> float:
        """Start it; return the monotonic time just before the exec."""
        argv = [
            sys.executable,
            "-m",
            "edgeplane.controller",
            "controller",
            "run",
            "--broker",
            self.broker,
            "--db",
            str(self.db),
            "--topic-root",
            str(self.root),
            "--log-format",
            "json",
            "--command-key-file",
            str(write_bench_key(self.db.parent / "command-key")),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            began = time.monotonic()
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        return began

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchUnavailable("the controller is not running")
        return self.process.pid

    def sample(self) -> tuple[int, float]:
        """(RSS bytes, CPU seconds so far); keeps the largest RSS seen."""
        proc = psutil.Process(self.pid)
        rss = proc.memory_info().rss
        times = proc.cpu_times()
        self.max_rss = max(self.max_rss, rss)
        return rss, times.user + times.system

    def peak_rss(self) -> int:
        """The kernel's high-water mark of the RSS (VmHWM), or the largest sample."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return max(self.max_rss, int(line.split()[1]) * 1024)
        return self.max_rss

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise BenchUnavailable(f"the controller exited; its log ends:\n{tail}")


class RssSampler:
    """A process's RSS sampled every ``every`` seconds while the block runs (psutil, in the
    driver): the peak, and the series, to see memory over a catch-up."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, int]] = []  # (monotonic time, RSS bytes)
        self._task: asyncio.Task[None] | None = None

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            process = psutil.Process(self.pid)
            while True:
                self.samples.append((time.monotonic(), process.memory_info().rss))
                await asyncio.sleep(self.every)
        except psutil.Error:
            return  # the process ended

    def series(self, start: float, step: float = 1.0) -> list[tuple[float, float]]:
        """(seconds since ``start``, MB) at most one sample per ``step`` seconds."""
        out: list[tuple[float, float]] = []
        for t, rss in self.samples:
            if t >= start and (not out or t - start - out[-1][0] >= step):
                out.append((round(t - start, 1), round(rss / 2**20, 1)))
        return out


# --- the fleet worker ------------------------------------------------------------------------
class FleetWorker:
    """``python -m bench._fleet`` (edge_agent.simulator.fleet.Fleet in its own process), driven
    by JSON lines on its stdin; each command's answer is one JSON line on its stdout."""

    def __init__(
        self,
        broker: str,
        root: TopicRoot,
        count: int,
        interval: float,
        log: Path,
        prefix: str = "sim",
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "bench._fleet",
            "--broker",
            broker,
            "--topic-root",
            str(root),
            "--count",
            str(count),
            "--interval",
            str(interval),
            "--prefix",
            prefix,
        ]
        self.count = count
        self.prefix = prefix
        self.log = log
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    def env(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchUnavailable("the fleet worker is not running")
        return self._proc.pid

    async def __aenter__(self) -> FleetWorker:
        with self.log.open("ab") as err:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                limit=2**24,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def call(self, op: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        """Send one command, return its answer (raises BenchUnavailable on an error)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise BenchUnavailable("the fleet worker is not running")
        async with self._lock:
            proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await proc.stdin.drain()
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout)
            except TimeoutError:
                raise BenchUnavailable(f"the fleet worker did not answer {op!r}") from None
        if not line:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchUnavailable(f"the fleet worker exited during {op!r}; its log ends:\n{tail}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchUnavailable(f"fleet worker, {op}: {answer['error']}")
        return answer


# --- the observer ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Seen:
    """One view message as the observer received it: ``t`` is time.monotonic()."""

    env: str
    status: str
    reason: str
    t: float
    retained: bool


class ViewObserver:
    """Subscribes to ``R/view/+`` (and ``R/alerts/+``), keeps every view message with its
    arrival time and the latest view of each environment."""

    def __init__(self, broker: str, root: TopicRoot) -> None:
        self.url = BrokerUrl.parse(broker)
        self.root = root
        self.latest: dict[str, Seen] = {}
        self.history: list[Seen] = []
        self.by_env: dict[str, list[Seen]] = {}
        self.alerts: list[tuple[str, bytes, float]] = []
        self._changed = asyncio.Event()
        self._view_prefix = f"{root}/view/"

    @contextlib.asynccontextmanager
    async def running(self, *extra_filters: str) -> AsyncIterator[ViewObserver]:
        client = aiomqtt.Client(
            self.url.host,
            self.url.port,
            identifier=f"bench-observer-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            max_queued_incoming_messages=0,
        )
        async with client:
            task = asyncio.create_task(self._pump(client), name="bench-observer")
            try:
                await client.subscribe(self.root.all_views(), qos=1)
                await client.subscribe(self.root.all_alerts(), qos=1)
                for topic in extra_filters:
                    await client.subscribe(topic, qos=1)
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    extra: list[tuple[str, bytes, float]]

    async def _pump(self, client: aiomqtt.Client) -> None:
        self.extra = []
        async for message in client.messages:
            t = time.monotonic()
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic.startswith(self._view_prefix):
                if not payload:
                    continue
                view = _VIEW.decode(payload)
                if view.status == "unknown":
                    continue  # a record whose agent never connected (default-cloud)
                seen = Seen(view.env, view.status, view.reason, t, message.retain)
                self.latest[view.env] = seen
                self.history.append(seen)
                self.by_env.setdefault(view.env, []).append(seen)
            elif "/alerts/" in topic:
                self.alerts.append((topic, payload, t))
            else:
                self.extra.append((topic, payload, t))
            self._changed.set()

    async def wait_until(self, check: Any, timeout: float, what: str) -> float:
        """Wait until ``check()`` is true; return the monotonic time it became true."""
        deadline = time.monotonic() + timeout
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchUnavailable(f"timed out after {timeout:g}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return time.monotonic()

    def online_count(self) -> int:
        return sum(1 for seen in self.latest.values() if seen.status == "online")

    def first_after(
        self, env: str, status: str, after: float, reason: str | None = None
    ) -> Seen | None:
        for seen in self.by_env.get(env, ()):
            if seen.status == status and seen.t >= after and reason in (None, seen.reason):
                return seen
        return None


# --- command lines -----------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser, default_count: int = 10_000) -> None:
    parser.add_argument(
        "--count", type=int, default=default_count, help="simulated agents (fleet size)"
    )
    parser.add_argument("--quick", action="store_true", help="short windows, fewer rounds")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="directory for the JSON results"
    )


SPARE_FILES: Final = 64


def run_main(
    name: str,
    bench: Callable[[argparse.Namespace], Coroutine[Any, Any, Report]],
    args: argparse.Namespace,
) -> int:
    """Run one benchmark: 0 whatever it measured, 1 when it could not run at all."""
    limit = raise_open_files()
    print(f"== {name} ==", flush=True)
    try:
        count = int(getattr(args, "count", 1))
        if count < 1:
            raise BenchUnavailable(f"--count must be at least 1, not {count}")
        if count + SPARE_FILES > limit:
            raise BenchUnavailable(
                f"--count {count} needs {count + SPARE_FILES} open files in the fleet process, "
                f"but a process may open at most {limit} here"
            )
        report: Report = asyncio.run(bench(args))
    except BenchUnavailable as exc:
        print(f"bench {name} could not run: {exc}", file=sys.stderr, flush=True)
        return 1
    report.write(args.out)
    return 0


def sample_process(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds so far) of a process."""
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    return proc.memory_info().rss, times.user + times.system


class RealAgent:
    """``edge-agent run`` as a child process (one environment): ``python -m
    edgeplane.edge_agent`` of this interpreter unless ``command`` says otherwise."""

    def __init__(
        self,
        broker: str,
        root: TopicRoot,
        env: str,
        interval: float,
        work: Path,
        *,
        command: Sequence[str] = (sys.executable, "-m", "edgeplane.edge_agent"),
    ) -> None:
        self.env = env
        self.argv = [
            *command,
            "run",
            "--env-id",
            env,
            "--broker",
            broker,
            "--state-dir",
            str(work / f"state-{env}"),
            "--heartbeat-interval",
            str(interval),
            "--topic-root",
            str(root),
            "--log-format",
            "json",
            "--command-key",
            BENCH_SIGNER.public_key_b64,
        ]
        self.log = work / f"agent-{env}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        with self.log.open("ab") as out:
            began = time.monotonic()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return began

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchUnavailable(f"agent {self.env} is not running")
        return self.process.pid

    def signal(self, signum: int) -> float:
        """Send ``signum``; return the monotonic time just before."""
        t = time.monotonic()
        os.kill(self.pid, signum)
        return t

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
