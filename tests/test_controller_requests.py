"""Operator requests to a real controller process over MQTT 5 request/response: environment
records, their views, and bad requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.codec import encode
from edgeplane.shared.rpc import EnvCreate, EnvList, EnvShow, EnvUpdate
from edgeplane.shared.topics import TopicRoot
from tests.support.asking import ask, ask_ok, reply_topic
from tests.support.controller import heartbeat, start_controller
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc


@asynccontextmanager
async def everything(broker: MosquittoProcess, root: TopicRoot) -> AsyncIterator[Probe]:
    """A probe on the whole tree and our response topic."""
    async with open_probe(broker.url, root.everything()) as probe:
        yield probe


def view_payloads(probe: Probe, root: TopicRoot, env: str, after: int = 0) -> list[bytes]:
    return [m.payload for m in probe.messages[after:] if m.topic == root.view(env)]


@pytest.mark.slow
async def test_env_create_list_show_update_and_the_unknown_view(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        # the default cloud environment exists from the start, never seen: unknown
        cloud = await probe.wait_json(root.view("default-cloud"), status="unknown")
        assert cloud["registered"] is True

        created = await ask_ok(
            probe, root,
            EnvCreate(stage="prod", location="Plant 4", purpose="vision", project="acme",
                      labels={"line": "4"}),
        )  # fmt: skip
        assert created["id"] == "prod-plant-4-vision"
        assert (created["project"], created["status"], created["labels"]) == (
            "acme", "unknown", {"line": "4"},
        )  # fmt: skip
        view = await probe.wait_json(root.view("prod-plant-4-vision"), status="unknown")
        assert view["since"] == created["created"]
        await probe.wait_json(root.view("acme-cloud"), status="unknown")  # with its project

        duplicate = await ask(
            probe, root, EnvCreate(id="prod-plant-4-vision", stage="dev", location="x",
                                   purpose="y"),
        )  # fmt: skip
        assert (duplicate.ok, duplicate.code) == (False, "exists")
        assert "'prod-plant-4-vision' exists already" in duplicate.error

        listed = await ask_ok(probe, root, EnvList(project="acme"))
        assert [e["id"] for e in listed] == ["acme-cloud", "prod-plant-4-vision"]
        everyone = await ask_ok(probe, root, EnvList())
        assert {"default-cloud", "acme-cloud", "prod-plant-4-vision"} <= {e["id"] for e in everyone}
        # a page at a time, by id
        first = await ask_ok(probe, root, EnvList(limit=2))
        rest = await ask_ok(probe, root, EnvList(limit=2, after=first[-1]["id"]))
        assert [e["id"] for e in first + rest] == sorted(e["id"] for e in everyone)
        assert len(first) == 2

        updated = await ask_ok(
            probe, root,
            EnvUpdate(id="prod-plant-4-vision", labels={"gpu": "yes"}, remove_labels=["line"]),
        )  # fmt: skip
        assert updated["labels"] == {"gpu": "yes"}
        shown = await ask_ok(probe, root, EnvShow(id="prod-plant-4-vision"))
        assert shown["labels"] == {"gpu": "yes"}

        missing = await ask(probe, root, EnvShow(id="ghost"))
        assert (missing.ok, missing.code) == (False, "not-found")
        offline = await ask(probe, root, EnvUpdate(id="prod-plant-4-vision", interval=5))
        assert (offline.ok, offline.code) == (False, "offline")
        assert "has never been online" in offline.error
        assert await controller.proc.terminate() == 0

    # records survive the restart
    async with everything(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe, db=controller.db)
        shown = await ask_ok(probe, root, EnvShow(id="prod-plant-4-vision"))
        assert shown["labels"] == {"gpu": "yes"}


@pytest.mark.slow
async def test_an_agent_without_a_record_is_unregistered_until_its_record_is_created(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "edge-u")
        view = await probe.wait_json(root.view("edge-u"), status="online")
        assert view["registered"] is False
        listed = {e["id"]: e for e in await ask_ok(probe, root, EnvList())}
        assert listed["edge-u"]["registered"] is False
        assert listed["edge-u"]["status"] == "online"
        mark = probe.mark()
        await ask_ok(probe, root, EnvCreate(id="edge-u", stage="dev", location="lab",
                                            purpose="test"))  # fmt: skip
        flipped = await probe.wait_json(root.view("edge-u"), after=mark, registered=True)
        assert (flipped["status"], flipped["since"]) == ("online", view["since"])
        assert not [m for m in probe.messages if m.topic == root.cmd("edge-u")]


@pytest.mark.slow
async def test_bad_requests_get_an_invalid_reply_naming_the_problem_or_are_counted(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe, "--stats-interval", "0.3")
        cases = [
            (b"not json", "not-json"),
            (b'{"op": "env-create", "stage": "qa", "location": "x", "purpose": "y"}', "stage"),
            (b'{"op": "launch-rockets"}', "op"),
            (b'{"op": "env-show"}', "id"),
        ]
        for payload, named in cases:
            reply = await ask(probe, root, payload)
            assert (reply.ok, reply.code) == (False, "invalid")
            assert named in reply.error
        # the correlation data comes back as it was sent
        reply = await ask(probe, root, EnvShow(id="default-cloud"), correlation=b"\x00\xffabc")
        assert reply.ok
        # no response topic: nobody to answer; counted as bad input
        mark = probe.mark()
        await probe.publish(root.requests(), b'{"op": "env-list"}')
        stats = await probe.wait_json(
            root.controller_status(), after=mark, dropped={"no-response-topic": 1}
        )
        assert stats["status"] == "online"
        assert not [m for m in probe.messages[mark:] if m.topic == reply_topic(root)]
        assert json.loads(probe.on(root.controller_status())[-1].payload)["duplicates"] == 0


@pytest.mark.slow
async def test_a_request_delivered_twice_runs_and_is_answered_once(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        request = EnvCreate(id="edge-twice", stage="dev", location="lab", purpose="test")
        first = await ask(probe, root, request, correlation=b"same-correlation")
        assert first.ok
        mark = probe.mark()
        with pytest.raises(AssertionError, match="timed out"):  # QoS 1 re-delivery, say
            await ask(probe, root, request, correlation=b"same-correlation", timeout=2.0)
        # the same request under new correlation data is a new request: refused, it exists
        again = await ask(probe, root, request)
        assert (again.ok, again.code) == (False, "exists")
        replies = [m for m in probe.messages[mark:] if m.topic == reply_topic(root)]
        assert len(replies) == 1


def test_an_event_page_is_cut_to_fit_one_reply_but_never_empty() -> None:
    from edgeplane.controller.daemon.requests import _fitting
    from edgeplane.shared.messages import StepFinished
    from edgeplane.shared.rpc import MAX_REPLY, LoggedEvent

    def entry(number: int) -> LoggedEvent:
        tail = "x" * 4096
        event = StepFinished(env="edge-a", seq=number, step="s", index=0, exit_code=1,
                             duration=1.0, ok=False, stdout=tail, stderr=tail)  # fmt: skip
        return LoggedEvent(id=number, at=1.0, event=event)

    many = [entry(n) for n in range(1, 201)]  # ~1.6 MB together
    page = _fitting(many)
    assert 100 < len(page) < 200
    assert page == many[: len(page)]
    assert sum(len(encode(e)) for e in page) < MAX_REPLY
    assert _fitting(many[:3]) == many[:3]
    assert _fitting([]) == []
