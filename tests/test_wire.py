"""The minimal MQTT 5 client: its codec (pure), its reaction to a misbehaving broker (a
scripted peer on loopback, since mosquitto never sends bad bytes), and the real thing
against mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.edge_agent.errors import AgentError
from edgeplane.edge_agent.simulator.wire.errors import (
    ConnackRefused,
    ConnectionClosed,
    MalformedPacket,
    WireError,
    reason_name,
)
from edgeplane.edge_agent.simulator.wire.fields import decode_varint, encode_varint
from edgeplane.edge_agent.simulator.wire.handshake import connect
from edgeplane.edge_agent.simulator.wire.keepalive import KeepaliveScheduler
from edgeplane.edge_agent.simulator.wire.packets import (
    FrameBuffer,
    LastWill,
    PubAck,
    Publish,
    SubAck,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    parse_packet,
)
from edgeplane.edge_agent.simulator.wire.properties import (
    Properties,
    decode_properties,
    encode_properties,
)
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import open_probe


# --- variable byte integers ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_matches_the_examples_of_the_spec(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))


@given(st.integers(0, 268_435_455), st.binary(max_size=4))
def test_varint_round_trips_and_stops_at_its_end(value: int, tail: bytes) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded + tail) == (value, len(encoded))


@pytest.mark.parametrize("value", [-1, 268_435_456])
def test_varint_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(WireError, match="out of range"):
        encode_varint(value)


def test_varint_of_five_bytes_is_malformed_and_a_short_one_incomplete() -> None:
    with pytest.raises(MalformedPacket, match="longer than 4 bytes"):
        decode_varint(b"\xff\xff\xff\xff\x01")
    assert decode_varint(b"\xff\xff") is None


# --- properties -------------------------------------------------------------------------------
_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20
)
properties_strategy = st.builds(
    Properties,
    payload_format=st.none() | st.integers(0, 1),
    message_expiry=st.none() | st.integers(0, 2**32 - 1),
    content_type=st.none() | _text,
    correlation_data=st.none() | st.binary(max_size=20),
    subscription_ids=st.lists(st.integers(1, 268_435_455), max_size=3).map(tuple),
    server_keepalive=st.none() | st.integers(0, 65_535),
    reason_string=st.none() | _text,
    user_properties=st.lists(st.tuples(_text, _text), max_size=3).map(tuple),
    maximum_packet_size=st.none() | st.integers(1, 2**32 - 1),
)


@given(properties_strategy)
def test_properties_round_trip(properties: Properties) -> None:
    encoded = encode_properties(properties)
    assert decode_properties(encoded) == (properties, len(encoded))


def test_properties_encode_as_identifier_and_value() -> None:
    encoded = encode_properties(Properties(message_expiry=30, content_type="a"))
    assert encoded == b"\x09" + b"\x02\x00\x00\x00\x1e" + b"\x03\x00\x01a"


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (b"\x02\x7f\x00", "unknown property 0x7F"),
        (b"\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02", "message_expiry appears twice"),
        (b"\x03\x02\x00\x00", "truncated"),
        (b"\x05\x03\x00\x02\xff\xfe", "not valid UTF-8"),
        (b"\x04\x03\x00\x01\x00", "contains NUL"),
        (b"\x09\x02", "truncated"),
    ],
)
def test_bad_properties_are_malformed(raw: bytes, complaint: str) -> None:
    with pytest.raises(MalformedPacket, match=complaint):
        decode_properties(raw)


def test_out_of_range_property_values_are_refused_when_encoding() -> None:
    with pytest.raises(WireError, match="four-byte integer out of range"):
        encode_properties(Properties(message_expiry=2**32))


# --- packets we send --------------------------------------------------------------------------
def test_connect_with_a_retained_qos1_will() -> None:
    will = LastWill("s", b"x", qos=1, retain=True, properties=Properties(message_expiry=5))
    packet = encode_connect("ab", 30, will=will)
    body = (
        b"\x00\x04MQTT\x05"
        + bytes([0x02 | 0x04 | 0x08 | 0x20])  # clean start, will, will QoS 1, will retain
        + b"\x00\x1e"  # keepalive 30
        + b"\x00"  # no properties
        + b"\x00\x02ab"
        + b"\x05\x02\x00\x00\x00\x05"  # will properties: message expiry 5
        + b"\x00\x01s"
        + b"\x00\x01x"
    )
    assert packet == b"\x10" + bytes([len(body)]) + body


def test_connect_without_will_has_only_clean_start() -> None:
    packet = encode_connect("c", 0, properties=Properties(maximum_packet_size=1024))
    assert packet[9] == 0x02
    assert packet[12:18] == b"\x05\x27\x00\x00\x04\x00"


def test_subscribe_packet() -> None:
    assert encode_subscribe(7, "a/+", qos=1) == b"\x82\x09\x00\x07\x00\x00\x03a/+\x01"


def test_disconnect_and_puback_packets() -> None:
    assert encode_disconnect() == b"\xe0\x00"
    assert encode_disconnect(0x81) == b"\xe0\x02\x81\x00"
    assert encode_puback(258) == b"\x40\x02\x01\x02"


@pytest.mark.parametrize("topic", ["", "a/+", "a/#"])
def test_publish_refuses_wildcards_and_empty_topics(topic: str) -> None:
    with pytest.raises(WireError, match="no wildcards"):
        encode_publish(topic, b"x")


def test_publish_refuses_qos2_and_a_missing_packet_id() -> None:
    with pytest.raises(WireError, match="QoS 2"):
        encode_publish("a", b"", qos=2, packet_id=1)
    with pytest.raises(WireError, match="needs a packet id"):
        encode_publish("a", b"", qos=1)


@given(
    topic=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00+#"), min_size=1
    ),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    retain=st.booleans(),
    properties=properties_strategy,
)
def test_publish_round_trips_through_framing_and_parsing(
    topic: str, payload: bytes, qos: int, retain: bool, properties: Properties
) -> None:
    packet_id = 513 if qos else None
    packet = encode_publish(
        topic, payload, qos=qos, retain=retain, packet_id=packet_id, properties=properties
    )
    [(first_byte, body)] = FrameBuffer().feed(packet)
    message = parse_packet(first_byte, body)
    assert message == Publish(topic, payload, qos, retain, properties)
    assert isinstance(message, Publish)
    assert message.packet_id == packet_id


# --- framing and parsing what the broker sends --------------------------------------------------
def test_frames_arrive_whole_however_the_bytes_are_split() -> None:
    stream = encode_puback(1) + encode_publish("t", b"x" * 200) + b"\xd0\x00"
    frames = FrameBuffer()
    received = [frame for byte in stream for frame in frames.feed(bytes([byte]))]
    assert [first for first, _ in received] == [0x40, 0x30, 0xD0]
    assert received[1][1].endswith(b"x" * 200)


def test_a_frame_over_our_limit_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="exceeds our maximum of 100"):
        FrameBuffer(max_size=100).feed(b"\x30\xe5\x00")


def test_acknowledgements_parse() -> None:
    assert parse_packet(0x40, b"\x00\x05") == PubAck(5, 0, Properties())
    assert parse_packet(0x40, b"\x00\x05\x10") == PubAck(5, 0x10, Properties())
    suback = parse_packet(0x90, b"\x00\x09\x03\x1f\x00\x00\x01\x87")
    assert suback == SubAck(9, (0x01, 0x87), Properties(reason_string=""))


@pytest.mark.parametrize(
    ("first_byte", "body", "complaint"),
    [
        (0x20, b"\x02\x00\x00", "reserved acknowledge flags"),
        (0x21, b"\x00\x00\x00", "reserved flags"),
        (0x36, b"\x00\x01t\x00", "QoS 3"),
        (0x38, b"\x00\x01t\x00", "DUP set on a QoS 0"),
        (0x32, b"\x00\x01t\x00\x00\x00", "packet identifier 0"),
        (0x30, b"\x00\x03a/#\x00", "invalid topic name"),
        (0x30, b"\x00\x05ab", "truncated"),
        (0x40, b"\x00\x01\x00\x00\x99", "trailing bytes"),
        (0x90, b"\x00\x01\x00", "without reason codes"),
        (0xD0, b"\x00", "PINGRESP with a body"),
        (0x10, b"", "unexpected packet type 1"),
        (0x80, b"\x00\x01\x00\x00\x01a\x00", "unexpected packet type 8"),
    ],
)
def test_malformed_packets_from_the_broker(first_byte: int, body: bytes, complaint: str) -> None:
    with pytest.raises(MalformedPacket, match=complaint):
        parse_packet(first_byte, body)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_nothing_but_malformed_packet(data: bytes) -> None:
    try:
        for first_byte, body in FrameBuffer().feed(data):
            parse_packet(first_byte, body)
    except MalformedPacket:
        pass


def test_wire_errors_belong_to_the_agents_hierarchy() -> None:
    assert issubclass(WireError, AgentError)
    assert reason_name(0x8E) == "0x8E session taken over"


# --- a scripted broker ------------------------------------------------------------------------
@dataclass
class Peer:
    """One accepted connection of the scripted broker."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    frames: FrameBuffer = field(default_factory=FrameBuffer)
    queued: list[tuple[int, bytes]] = field(default_factory=list)

    async def next_packet(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            while not self.queued:
                data = await self.reader.read(4096)
                if not data:
                    raise EOFError("the client closed the connection")
                self.queued += self.frames.feed(data)
        return self.queued.pop(0)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Script = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_broker(script: Script) -> AsyncIterator[BrokerUrl]:
    done: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            with contextlib.suppress(EOFError, ConnectionError):
                await script(Peer(reader, writer))
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield BrokerUrl("mqtt", "127.0.0.1", port)
    finally:
        server.close()
        for task in done:
            task.cancel()
        await server.wait_closed()


def connack(reason: int = 0, properties: Properties | None = None) -> bytes:
    body = b"\x00" + bytes([reason]) + encode_properties(properties)
    return b"\x20" + encode_varint(len(body)) + body


async def test_a_refused_connect_names_the_reason() -> None:
    async def refuse(peer: Peer) -> None:
        await peer.next_packet()
        await peer.send(connack(0x87, Properties(reason_string="no entry")))

    async with scripted_broker(refuse) as url:
        with pytest.raises(ConnackRefused, match=r"refused the connection: 0x87 not authorized"):
            await connect(url, client_id="c1")


async def test_no_connack_is_a_timeout_error() -> None:
    async def silent(peer: Peer) -> None:
        await peer.next_packet()
        await peer.next_packet(timeout=10)

    async with scripted_broker(silent) as url:
        with pytest.raises(WireError, match="no CONNACK"):
            await connect(url, client_id="c1", connect_timeout=0.3)


async def test_an_unreachable_broker_is_a_wire_error() -> None:
    async with scripted_broker(lambda peer: asyncio.sleep(0)) as url:
        pass  # the port is closed again
    with pytest.raises(WireError, match="cannot connect"):
        await connect(url, client_id="c1")


async def test_garbage_from_the_broker_closes_with_malformed_packet() -> None:
    answered = asyncio.get_running_loop().create_future()

    async def garbage(peer: Peer) -> None:
        await peer.next_packet()
        await peer.send(connack())
        await peer.send(b"\x36\x04\x00\x01t\x00")  # PUBLISH with QoS 3
        answered.set_result(await peer.next_packet())

    async with scripted_broker(garbage) as url:
        client = await connect(url, client_id="c1")
        why = await asyncio.wait_for(client.wait_closed(), 5)
        assert isinstance(why, MalformedPacket)
        assert "QoS 3" in str(why)
        assert await asyncio.wait_for(answered, 5) == (0xE0, b"\x81\x00")
        with pytest.raises(MalformedPacket):
            await client.publish("t", b"x")


async def test_a_broker_disconnect_carries_its_reason() -> None:
    async def take_over(peer: Peer) -> None:
        await peer.next_packet()
        await peer.send(connack())
        await peer.send(encode_disconnect(0x8E))
        await peer.next_packet(timeout=5)

    async with scripted_broker(take_over) as url:
        client = await connect(url, client_id="c1")
        why = await asyncio.wait_for(client.wait_closed(), 5)
        assert isinstance(why, ConnectionClosed)
        assert why.reason_code == 0x8E
        assert "session taken over" in str(why)


@pytest.mark.slow
async def test_keepalive_pings_come_from_the_shared_scheduler() -> None:
    pings = asyncio.Queue[int]()

    async def answer_two_pings(peer: Peer) -> None:
        await peer.next_packet()
        await peer.send(connack())
        for answer in (True, True, False):
            first_byte, _ = await peer.next_packet()
            pings.put_nowait(first_byte)
            if answer:
                await peer.send(b"\xd0\x00")
        await peer.next_packet(timeout=10)

    async with scripted_broker(answer_two_pings) as url, KeepaliveScheduler(tick=0.05) as pinger:
        client = await connect(url, client_id="c1", keepalive=1, pinger=pinger)
        assert client.keepalive == 1
        for _ in range(3):
            assert await asyncio.wait_for(pings.get(), 5) == 0xC0
        why = await asyncio.wait_for(client.wait_closed(), 5)
        assert isinstance(why, ConnectionClosed)
        assert "no PINGRESP" in str(why)


async def test_qos1_publishes_wait_for_a_free_slot_of_the_window() -> None:
    seen = asyncio.Queue[int]()
    release = asyncio.Event()

    async def slow_acks(peer: Peer) -> None:
        await peer.next_packet()
        await peer.send(connack(properties=Properties(receive_maximum=2)))
        held: list[int] = []
        while True:
            first_byte, body = await peer.next_packet(timeout=10)
            assert first_byte >> 4 == 3
            packet_id = int.from_bytes(body[3:5], "big")  # after the 1-byte topic "t"
            seen.put_nowait(packet_id)
            held.append(packet_id)
            if len(held) == 2:
                await release.wait()
            if release.is_set():
                for waiting in held:
                    await peer.send(encode_puback(waiting))
                held.clear()

    async with scripted_broker(slow_acks) as url:
        client = await connect(url, client_id="c1")
        async with asyncio.TaskGroup() as tasks:
            for n in range(5):
                tasks.create_task(client.publish("t", b"%d" % n, qos=1))
            first_two = [await asyncio.wait_for(seen.get(), 5) for _ in range(2)]
            assert seen.empty()
            assert client.in_flight == 2
            release.set()
        assert first_two == [1, 2]
        assert client.in_flight == 0
        client.abort()


async def test_a_refused_publish_raises_with_the_reason_code() -> None:
    async def refuse_publish(peer: Peer) -> None:
        await peer.next_packet()
        await peer.send(connack())
        _, body = await peer.next_packet()
        await peer.send(b"\x40\x04" + body[3:5] + b"\x87\x00")
        await peer.next_packet(timeout=10)

    async with scripted_broker(refuse_publish) as url:
        client = await connect(url, client_id="c1")
        with pytest.raises(WireError, match="not authorized") as caught:
            await client.publish("t", b"x", qos=1)
        assert caught.value.reason_code == 0x87
        await client.disconnect()


# --- against mosquitto ------------------------------------------------------------------------
async def test_publish_subscribe_and_will_against_mosquitto(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(broker.url)
    status, cmd = root.status("wire-a"), root.cmd("wire-a")
    received: list[Publish] = []
    got_command = asyncio.Event()

    def on_message(message: Publish) -> None:
        received.append(message)
        got_command.set()

    async with open_probe(broker.url, root.everything()) as probe, KeepaliveScheduler() as pinger:
        will = LastWill(status, b'{"status":"offline"}', qos=1, retain=True)
        client = await connect(
            url, client_id="wire-a", will=will, on_message=on_message, pinger=pinger
        )
        assert await client.subscribe(cmd, qos=1) == 1
        await client.publish(
            status,
            b'{"status":"online"}',
            qos=1,
            retain=True,
            properties=Properties(message_expiry=30),
        )
        online = await probe.wait_for(lambda m: m.topic == status, what="the online message")
        assert json.loads(online.payload) == {"status": "online"}
        assert online.properties is not None
        expiry = online.properties.json()["MessageExpiryInterval"]  # type: ignore[no-untyped-call]
        assert expiry == 30

        await probe.publish(cmd, b"do it", qos=1)
        await asyncio.wait_for(got_command.wait(), 10)
        assert [(m.topic, m.payload, m.qos) for m in received] == [(cmd, b"do it", 1)]

        mark = probe.mark()
        client.abort()
        will_msg = await probe.wait_json(status, after=mark, status="offline")
        assert will_msg == {"status": "offline"}


async def test_a_clean_disconnect_sends_no_will(broker: MosquittoProcess, root: TopicRoot) -> None:
    url = BrokerUrl.parse(broker.url)
    status, marker = root.status("wire-b"), root.events("wire-b")
    async with open_probe(broker.url, root.everything()) as probe:
        client = await connect(url, client_id="wire-b", will=LastWill(status, b"will"))
        await client.disconnect()
        assert await client.wait_closed() is None
        with pytest.raises(ConnectionClosed):
            await client.publish(status, b"late")
        await probe.publish(marker, b"after")
        await probe.wait_for(lambda m: m.topic == marker, what="the marker")
        assert probe.on(status) == []


async def test_publish_nowait_reports_its_puback_and_refuses_a_full_window() -> None:
    acked = asyncio.Event()

    async def ack_on_request(peer: Peer) -> None:
        await peer.next_packet()
        await peer.send(connack(properties=Properties(receive_maximum=1)))
        _, body = await peer.next_packet()
        await acked.wait()
        await peer.send(encode_puback(int.from_bytes(body[3:5], "big"), 0x10))
        await peer.next_packet(timeout=10)

    async with scripted_broker(ack_on_request) as url:
        client = await connect(url, client_id="c1")
        outcomes: list[WireError | None] = []
        done = asyncio.Event()

        def on_done(error: WireError | None) -> None:
            outcomes.append(error)
            done.set()

        client.publish_nowait("t", b"1", qos=1, on_done=on_done)
        with pytest.raises(WireError, match="in-flight window"):
            client.publish_nowait("t", b"2", qos=1)
        acked.set()
        await asyncio.wait_for(done.wait(), 5)
        assert outcomes == [None]  # 0x10 "no matching subscribers" is a success
        done.clear()
        client.publish_nowait("t", b"3", qos=1, on_done=on_done)  # the slot is free again
        client.abort()
        await asyncio.wait_for(done.wait(), 5)
        assert len(outcomes) == 2
        assert isinstance(outcomes[1], ConnectionClosed)
