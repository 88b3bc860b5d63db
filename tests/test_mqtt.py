"""The controller's MQTT boundary (controller/mqtt.py) against a real broker: what a message
carries, the connection's lifecycle, and that every failure is a BrokerUnavailable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.broker.process import free_port
from edgeplane.controller.errors import BrokerUnavailable
from edgeplane.controller.mqtt import (
    READ_PAUSE_AT,
    READ_RESUME_AT,
    Connection,
    ConnectionState,
    Message,
    Subscription,
    Will,
    unique_client_id,
)
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.topics import TopicRoot
from tests.support.system import wait_until


def connection(broker: MosquittoProcess, **options: object) -> Connection:
    return Connection(BrokerUrl.parse(broker.url), unique_client_id("test"), **options)  # type: ignore[arg-type]


async def next_message(connection: Connection, within: float = 5.0) -> Message:
    return await asyncio.wait_for(anext(aiter(connection)), within)


def state(connection: Connection) -> ConnectionState:
    return connection.state  # (a function: the state changes under the type checker's eyes)


def paused(connection: Connection) -> bool:
    return connection.reading_paused


async def take_all(connection: Connection, into: list[int]) -> None:
    async for message in connection:
        into.append(int(message.payload))


async def test_a_message_carries_its_payload_flags_and_properties(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    topic = root.status("edge-a")
    async with connection(broker) as sender:
        await sender.publish(
            topic,
            b"{}",
            retain=True,
            expiry=60,
            correlation=b"\x01\x02",
            response_topic=root.reply("me"),
        )
        async with connection(broker) as reader:
            assert await reader.subscribe(topic) == [1]  # granted QoS 1
            retained = await next_message(reader)
            await sender.publish(topic, b"live")
            live = await next_message(reader)
        await sender.publish(topic, b"", retain=True)  # clear it again
    assert (retained.topic, retained.payload, retained.retained) == (topic, b"{}", True)
    assert retained.expiry_left is not None
    assert 50 <= retained.expiry_left <= 60
    assert retained.correlation == b"\x01\x02"
    assert retained.response_topic == root.reply("me")
    assert (live.payload, live.retained, live.expiry_left, live.correlation) == (
        b"live",
        False,
        None,
        None,
    )


async def test_no_local_keeps_a_connections_own_messages_from_it(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    async with connection(broker) as both, connection(broker) as other:
        await both.subscribe(Subscription(root.all_views(), qos=0, no_local=True))
        await both.publish(root.view("mine"), b"1")
        await other.publish(root.view("theirs"), b"2")
        message = await next_message(both)
    assert message.topic == root.view("theirs")


async def test_a_connection_is_reusable_but_not_re_entrant(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    conn = connection(broker)
    assert state(conn) is ConnectionState.NEW
    for _ in range(2):
        async with conn:
            assert state(conn) is ConnectionState.CONNECTED
            with pytest.raises(RuntimeError, match="not re-entrant"):
                await conn.__aenter__()
            await conn.subscribe(root.all_alerts())
            await conn.publish(root.alerts("a"), b"x")
            assert (await next_message(conn)).payload == b"x"
        assert state(conn) is ConnectionState.CLOSED


async def test_an_unreachable_broker_is_broker_unavailable_naming_it() -> None:
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}")
    conn = Connection(url, unique_client_id("test"), timeout=2.0)
    with pytest.raises(BrokerUnavailable, match=f"cannot reach the broker at {url}"):
        async with conn:
            pass
    assert conn.state is ConnectionState.CLOSED


async def test_a_lost_connection_delivers_what_came_before_then_raises(
    private_broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(private_broker.url)
    reader = Connection(url, unique_client_id("test"), keepalive=5)
    async with reader:
        await reader.subscribe(root.all_alerts())
        async with Connection(url, unique_client_id("test")) as sender:
            for n in range(50):
                await sender.publish(root.alerts("a"), str(n).encode())
        await wait_until(lambda: reader.backlog == 50, "every message queued, none taken")
        private_broker.stop()
        received: list[int] = []
        with pytest.raises(BrokerUnavailable, match="lost the connection to the broker"):
            await asyncio.wait_for(take_all(reader, received), 15)
        assert state(reader) is ConnectionState.LOST
    assert received == list(range(50))
    assert state(reader) is ConnectionState.CLOSED
    assert reader.backlog == 0


async def test_a_connection_taken_over_is_lost_and_its_will_published(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    """Another connection with the same client id takes the session over: the broker
    publishes the first one's will, and its reader learns it is lost."""
    url = BrokerUrl.parse(broker.url)
    topic, client_id = root.controller_status(), unique_client_id("test")
    will = Will(topic, b"gone", retain=True)
    async with Connection(url, unique_client_id("test")) as watcher:
        await watcher.subscribe(topic)
        async with Connection(url, client_id, will=will) as first, Connection(url, client_id):
            assert (await next_message(watcher)).payload == b"gone"
            with pytest.raises(BrokerUnavailable, match="lost the connection"):
                await next_message(first)
            assert state(first) is ConnectionState.LOST
        await watcher.publish(topic, b"", retain=True)


async def test_a_reader_behind_holds_a_bounded_queue_and_loses_nothing(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    """A flood faster than the reader: the connection stops reading the socket at
    READ_PAUSE_AT queued messages (the broker keeps the rest), reads again once the reader
    took it down to READ_RESUME_AT, and the reader gets every message, in order."""
    sent = 3 * READ_PAUSE_AT
    async with connection(broker) as reader, connection(broker) as sender:
        await reader.subscribe(root.all_alerts())
        for start in range(0, sent, 200):
            batch = range(start, start + 200)
            await asyncio.gather(*(sender.publish(root.alerts("a"), b"%d" % n) for n in batch))
        await wait_until(lambda: paused(reader), "reading paused")
        most = 0
        for _ in range(10):  # it stays paused while nobody takes anything
            await asyncio.sleep(0.05)
            most = max(most, reader.backlog)
        assert READ_PAUSE_AT <= most < READ_PAUSE_AT + 200
        assert paused(reader)
        taken = [int((await next_message(reader)).payload) for _ in range(most - READ_RESUME_AT)]
        assert not paused(reader)
        while len(taken) < sent:
            taken.append(int((await next_message(reader)).payload))
    assert taken == list(range(sent))


async def test_with_manual_ack_what_was_not_acknowledged_comes_again_and_nothing_else(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    """The events session's guarantee: a message taken but not acknowledged (the
    controller died before it was stored) is sent again on the next connection; one
    acknowledged is not."""
    url = BrokerUrl.parse(broker.url)
    client_id = unique_client_id("test")

    def session() -> Connection:
        return Connection(url, client_id, clean_start=False, session_expiry=60, manual_ack=True)

    reader = session()
    async with reader:
        await reader.subscribe(root.all_events())
        async with connection(broker) as sender:
            for n in range(4):
                await sender.publish(root.events("a"), str(n).encode())
        taken = [await next_message(reader) for _ in range(4)]
        assert [int(m.payload) for m in taken] == [0, 1, 2, 3]
        for message in taken[:2]:
            reader.ack(message.receipt)
    async with reader:  # the same client id, its session kept
        again = [await next_message(reader) for _ in range(2)]
        assert [int(m.payload) for m in again] == [2, 3]
        reader.ack(taken[2].receipt)  # of the connection before: not acknowledged now
        for message in again:
            reader.ack(message.receipt)
    async with session() as last:
        with pytest.raises(TimeoutError):
            await next_message(last, within=1.0)  # nothing left: waiting is the test


def _publish_properties(**values: object) -> bytes:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    made = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(made, name, value)
    packed: bytes = made.pack()  # type: ignore[no-untyped-call]
    return packed


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"MessageExpiryInterval": 29},
        {"ResponseTopic": "a/b", "CorrelationData": b"\x00\x01"},
        {"PayloadFormatIndicator": 1, "ContentType": "application/json"},
        {"UserProperty": [("a", "1"), ("b", "2")], "SubscriptionIdentifier": [7, 300]},
        {"TopicAlias": 3, "MessageExpiryInterval": 2**31},
    ],
)
def test_received_properties_decode_as_paho_decodes_them(values: dict[str, object]) -> None:
    """controller/mqtt.py decodes a received PUBLISH's properties its cheaper way: the
    same attributes, the same length read, the same refusal of a duplicate."""
    from paho.mqtt import _packet
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    received: Any = vars(_packet)["Properties"]  # what paho's decoder makes
    assert received is not Properties  # ours is installed
    packed = _publish_properties(**values) + b"payload"
    ours, our_length = received(PacketTypes.PUBLISH).unpack(packed)
    theirs, their_length = Properties(PacketTypes.PUBLISH).unpack(packed)  # type: ignore[no-untyped-call]
    assert our_length == their_length
    assert ours.json() == theirs.json()
    for name in values:
        assert getattr(ours, name) == getattr(theirs, name)


def test_a_property_given_twice_is_refused_as_paho_refuses_it() -> None:
    from paho.mqtt import _packet
    from paho.mqtt.exception import MQTTException
    from paho.mqtt.packettypes import PacketTypes

    once = _publish_properties(MessageExpiryInterval=5)
    twice = bytes([2 * (len(once) - 1)]) + once[1:] + once[1:]
    with pytest.raises(MQTTException, match="more than once"):
        vars(_packet)["Properties"](PacketTypes.PUBLISH).unpack(twice)
