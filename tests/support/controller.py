"""A controller process for integration tests, and agents impersonated by a probe: status
payloads, heartbeats and wills published by hand, and what the controller published or
stored in return."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import write_key_file
from tests.support.probe import Probe
from tests.support.procs import Proc, start_proc

__all__ = [
    "Controller",
    "alerts",
    "heartbeat",
    "start_controller",
    "status_payload",
    "stored_transitions",
    "views",
    "will",
    "will_payload",
]


@dataclass
class Controller:
    proc: Proc
    db: Path
    boot: str
    since: float  # when it started, by its own clock


async def start_controller(
    broker: MosquittoProcess,
    root: TopicRoot,
    tmp_path: Path,
    procs: list[Proc],
    probe: Probe,
    *extra: str,
    db: Path | None = None,
) -> Controller:
    """Start ``edgeplane controller run`` and wait for its birth (online, retained)."""
    db = db or tmp_path / "controller.db"
    write_key_file(db.parent / "command-key")  # the default place: beside the db
    after = probe.mark()
    args = ["controller", "run", "--broker", broker.url, "--db", str(db)]
    args += ["--topic-root", str(root), "--log-format", "json", "--log-level", "debug", *extra]
    proc = await start_proc("edgeplane.controller", args, tmp_path / f"controller-{len(procs)}.log")
    procs.append(proc)
    birth = await probe.wait_json(
        root.controller_status(), after=after, status="online", timeout=20
    )
    return Controller(proc, db, birth["boot"], birth["since"])


def status_payload(env: str, *, bdseq: int = 1, seq: int = 0, interval: float = 30,
                   boot: str = "boot-a") -> bytes:  # fmt: skip
    return json.dumps(
        {
            "status": "online",
            "env": env,
            "bdseq": bdseq,
            "seq": seq,
            "interval": interval,
            "boot": boot,
        }
    ).encode()


def will_payload(env: str, *, bdseq: int = 1, reason: str = "connection-lost") -> bytes:
    return json.dumps({"status": "offline", "env": env, "bdseq": bdseq, "reason": reason}).encode()


async def heartbeat(probe: Probe, root: TopicRoot, env: str, **fields: Any) -> None:
    await probe.publish(root.status(env), status_payload(env, **fields), retain=True)


async def will(probe: Probe, root: TopicRoot, env: str, **fields: Any) -> None:
    await probe.publish(root.status(env), will_payload(env, **fields), retain=True)


def views(probe: Probe, root: TopicRoot, env: str, after: int = 0) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in probe.messages[after:] if m.topic == root.view(env)]


def alerts(probe: Probe, root: TopicRoot, after: int = 0) -> list[dict[str, Any]]:
    prefix = root.alerts("x")[:-1]
    return [json.loads(m.payload) for m in probe.messages[after:] if m.topic.startswith(prefix)]


def stored_transitions(db: Path, env: str) -> list[tuple[str, str, str, int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT from_status, to_status, reason, during_downtime FROM transitions"
            " WHERE env = ? ORDER BY id",
            (env,),
        ).fetchall()
    return [tuple(row) for row in rows]
