"""The request/response client against a real broker, with a small responder standing in
for the controller (the controller's own handler is tested end to end elsewhere)."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.broker.process import free_port
from edgeplane.controller.errors import (
    BrokerUnavailable,
    ControllerError,
    NoControllerAnswer,
    RequestRefused,
)
from edgeplane.controller.operator.client import ControllerClient
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import Accepted, Pong
from edgeplane.shared.rpc import REQUEST_EXPIRY, EnvInfo, EnvShow, Reply, Request
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import open_probe
from tests.support.responder import Responder, ok, responder


def env_info(env: str) -> EnvInfo:
    return EnvInfo(id=env, project="default", stage="dev", location="lab", purpose="x", created=1.0)


def show(request: Request) -> Reply:
    assert isinstance(request, EnvShow)
    return ok(env_info(request.id))


async def test_a_call_is_answered_on_its_response_topic_with_its_correlation_data(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    async with responder(broker.url, root, show) as serving:
        async with ControllerClient(BrokerUrl.parse(broker.url), root) as controller:
            first = await controller.call(EnvShow(id="edge-a"))
            second = await controller.call(EnvShow(id="edge-b"))
        assert (first, second) == (env_info("edge-a"), env_info("edge-b"))
        assert [taken.request for taken in serving.taken] == [
            EnvShow(id="edge-a"),
            EnvShow(id="edge-b"),
        ]
        taken = serving.taken[0]
        assert taken.response_topic == root.reply(controller.token)
        assert len(taken.correlation) == 16
        assert serving.taken[1].correlation != taken.correlation
        assert taken.qos == 1
        assert taken.expiry is not None
        assert 0 < taken.expiry <= REQUEST_EXPIRY


async def test_replies_for_other_calls_are_ignored(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    async def stale_then_right(serving: Responder) -> None:
        await serving.arrived.wait()
        taken = serving.taken[0]
        await serving.send(taken, encode(ok(env_info("stale"))), b"\x00" * 16)
        await serving.send(taken, b"not json", b"\x01" * 16)
        await serving.send(taken, encode(ok(env_info("edge-a"))), taken.correlation)

    async with responder(broker.url, root, lambda request: None) as serving:
        helper = asyncio.create_task(stale_then_right(serving))
        async with ControllerClient(BrokerUrl.parse(broker.url), root) as controller:
            assert await controller.call(EnvShow(id="edge-a")) == env_info("edge-a")
        await helper


async def test_a_refusal_carries_the_code_and_the_controllers_sentence(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    refuse = Reply(ok=False, code="not-found", error="no environment 'edge-z'")
    async with (
        responder(broker.url, root, lambda request: refuse),
        ControllerClient(BrokerUrl.parse(broker.url), root) as controller,
    ):
        with pytest.raises(RequestRefused) as caught:
            await controller.call(EnvShow(id="edge-z"))
    assert caught.value.code == "not-found"
    assert str(caught.value) == "no environment 'edge-z'"


async def test_an_answer_that_cannot_be_read_is_an_error_naming_the_request(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    wrong = Reply(ok=True, result=msgspec.Raw(json.dumps({"id": 3}).encode()))
    async with (
        responder(broker.url, root, lambda request: wrong),
        ControllerClient(BrokerUrl.parse(broker.url), root) as controller,
    ):
        with pytest.raises(ControllerError, match="answer to env-show could not be read"):
            await controller.call(EnvShow(id="edge-a"))


async def test_no_controller_is_one_plain_sentence(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    async with ControllerClient(BrokerUrl.parse(broker.url), root) as controller:
        with pytest.raises(NoControllerAnswer) as caught:
            await controller.call(EnvShow(id="edge-a"), within=0.5)
    assert str(caught.value) == f"no controller answered on {broker.url} within 0.5 s"


async def test_an_unreachable_broker_is_named_with_the_reason(root: TopicRoot) -> None:
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable) as caught:
        async with ControllerClient(url, root):
            pass
    assert str(caught.value).startswith(f"cannot reach the broker at {url}: ")


@pytest.mark.slow
async def test_a_broker_lost_during_a_call_fails_it_at_once(
    private_broker: MosquittoProcess, root: TopicRoot
) -> None:
    async with ControllerClient(BrokerUrl.parse(private_broker.url), root) as controller:
        call = asyncio.create_task(controller.call(EnvShow(id="edge-a"), within=30))
        await asyncio.sleep(0)  # let the call publish before the broker goes
        await asyncio.to_thread(private_broker.stop)
        with pytest.raises(BrokerUnavailable, match="lost the connection to the broker"):
            await asyncio.wait_for(call, 15)


async def test_a_feed_gets_the_events_of_its_environment_and_skips_bad_ones(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    async with (
        ControllerClient(BrokerUrl.parse(broker.url), root) as controller,
        open_probe(broker.url) as probe,
    ):
        one = await controller.follow_events("edge-a")
        every = await controller.follow_events()
        await probe.publish(root.events("edge-a"), b"garbage")
        mismatch = Pong(env="edge-b", seq=1)
        await probe.publish(root.events("edge-a"), encode(mismatch))
        await probe.publish(root.events("edge-b"), encode(Pong(env="edge-b", seq=2)))
        accepted = Accepted(env="edge-a", seq=3, dep="d-1", workflow="w", version="1")
        await probe.publish(root.events("edge-a"), encode(accepted))
        assert await one.next(within=5) == accepted
        assert await every.next(within=5) == Pong(env="edge-b", seq=2)
        assert await every.next(within=5) == accepted
        await probe.publish(root.events("edge-a"), encode(accepted))  # a duplicate
        await probe.publish(root.events("edge-b"), encode(Pong(env="edge-b", seq=4)))
        assert await every.next(within=5) == Pong(env="edge-b", seq=4)
        assert controller.dropped >= 2  # the garbage and the mismatch (once per subscription)
        with pytest.raises(TimeoutError):
            await one.next(within=0.2)
