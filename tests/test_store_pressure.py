"""What the store keeps for resource pressure and link quality: the link figures last shown
with each environment, and the open pressure episodes read back from the alert edges."""

from __future__ import annotations

from pathlib import Path

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.link_quality import LinkFigures
from edgeplane.controller.core.presence import EnvRecord, Judgement
from edgeplane.controller.daemon.store import open_store


def edge(env: str, kind: str, state: str, at: float) -> AlertEdge:
    return AlertEdge(env, kind, state, at, "")  # type: ignore[arg-type]


async def test_link_figures_and_open_pressure_episodes_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    shaky = EnvRecord("shaky", "online", 1.0, link=LinkFigures(12.5, 3))
    fresh = EnvRecord("fresh", "online", 1.0)
    alerts = [
        edge("shaky", "disk-pressure", "raised", 1.0),
        edge("shaky", "cpu-pressure", "raised", 2.0),
        edge("shaky", "cpu-pressure", "cleared", 3.0),
        edge("shaky", "flapping", "raised", 4.0),
        edge("full", "memory-pressure", "raised", 5.0),
        edge("full", "memory-pressure", "cleared", 6.0),
        edge("full", "memory-pressure", "raised", 7.0),
    ]
    async with open_store(db) as store:
        await store.submit(Judgement(records=[shaky, fresh], alerts=alerts))
    async with open_store(db) as store:
        kept = {record.env: record.link for record in await store.envs()}
        assert kept == {"shaky": LinkFigures(12.5, 3), "fresh": None}
        assert await store.open_pressure() == {"shaky": ["disk"], "full": ["mem"]}
