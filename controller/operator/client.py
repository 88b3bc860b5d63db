"""The operator commands' side of MQTT 5 request/response with the controller.

::

    async with ControllerClient(url, root) as controller:
        feed = await controller.follow_events("edge-a")  # before acting: nothing is missed
        info = await controller.call(DeployRequest(env="edge-a", workflow=workflow))
        event = await feed.next(within=30)

One connection per command. On entering, the client subscribes to its own response topic
``R/controller/reply/{client}``, before any request, so no reply can come too early. Each
call publishes its request with QoS 1, the response topic, 16 random bytes of correlation
data and a message expiry of :data:`shared.rpc.REQUEST_EXPIRY` seconds (a request nobody
took in time must not run later), then waits for the reply with the same correlation data.
Replies to earlier calls that timed out are dropped.

Errors (all :class:`controller.errors.ControllerError`):

- :class:`BrokerUnavailable`: ``cannot reach the broker at mqtt://HOST:PORT: <reason>``, or
  the connection was lost while waiting;
- :class:`NoControllerAnswer`: ``no controller answered on mqtt://HOST:PORT within 5 s``;
- :class:`RequestRefused`: the controller answered ``ok: false``; ``code`` and its sentence;
- :class:`ControllerError` itself: an answer this client cannot read.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from types import TracebackType
from typing import Any, Final, Self, cast

import msgspec

from edgeplane.controller.errors import (
    BrokerUnavailable,
    ControllerError,
    NoControllerAnswer,
    RequestRefused,
)
from edgeplane.controller.mqtt import Connection, Message, unique_client_id
from edgeplane.controller.tasks import cancel_and_wait
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import EVENT, check_env, encode
from edgeplane.shared.errors import DecodeError, InvalidTopic
from edgeplane.shared.messages import Event
from edgeplane.shared.rpc import (
    MAX_REPLY,
    REPLY,
    REQUEST_EXPIRY,
    RESULT_TYPES,
    ErrorCode,
    Reply,
    Request,
)
from edgeplane.shared.topics import TopicKind, TopicRoot

__all__ = ["DEFAULT_TIMEOUT", "ControllerClient", "EventFeed", "ask", "seconds"]

DEFAULT_TIMEOUT: Final = 5.0  # seconds to wait for the controller's reply
NOT_GRANTED: Final = 0x80  # SUBACK reason codes from here on refuse the subscription


def seconds(value: float) -> str:
    """``5.0`` as ``5``, ``2.5`` as ``2.5``: durations in messages."""
    return f"{value:g}"


class EventFeed:
    """Events from one environment's events topic (or all of them), as they arrive, each
    (env, src, seq) once: QoS 1 may deliver twice, and so do overlapping subscriptions."""

    def __init__(self, env: str | None) -> None:
        self.env = env
        self._seen: set[tuple[str, str, int]] = set()
        self._queue: asyncio.Queue[Event | BrokerUnavailable] = asyncio.Queue()

    def put(self, item: Event | BrokerUnavailable) -> None:
        if not isinstance(item, BrokerUnavailable):
            if self.env is not None and item.env != self.env:
                return
            key = (item.env, item.src, item.seq)
            if key in self._seen:
                return
            self._seen.add(key)
        self._queue.put_nowait(item)

    async def next(self, within: float | None = None) -> Event:
        """The next event; :class:`TimeoutError` after ``within`` seconds, or
        :class:`BrokerUnavailable` once the connection is lost."""
        item = await asyncio.wait_for(self._queue.get(), within)
        if isinstance(item, BrokerUnavailable):
            self._queue.put_nowait(item)  # every later call fails the same way
            raise item
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        return await self.next()


class ControllerClient:
    """An async context manager: one MQTT connection, any number of calls and feeds."""

    def __init__(self, url: BrokerUrl, root: TopicRoot, *, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.root = root
        self.token = unique_client_id("edgeplane-cli")
        self._connection = Connection(url, self.token, timeout=connect_timeout)
        # Under `broker init` an operator may read only the reply topic of its name: the
        # user name before the dot (`name.N` is its credential after N rotations).
        self._login = url.identity.username if url.identity else None
        self._reply_topic = root.reply(self._login.partition(".")[0] if self._login else self.token)
        self._pending: dict[bytes, asyncio.Future[Reply]] = {}
        self._feeds: list[EventFeed] = []
        self._lost: BrokerUnavailable | None = None
        self.dropped = 0  # payloads on events topics that were not valid events
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.enter_async_context(self._connection)
        try:
            (granted,) = await self._connection.subscribe(self._reply_topic)
            if granted >= NOT_GRANTED:
                raise ControllerError(
                    f"the broker does not let {self._login or 'this client'} read the "
                    f"controller's replies ({self._reply_topic}): this identity may not send "
                    "requests (a viewer can use `edgeplane status` and `edgeplane watch`)"
                )
        except BaseException:
            await self._close()
            raise
        pump = asyncio.create_task(self._pump(), name="rpc-pump")
        self._stack.push_async_callback(_cancel, pump)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        # Leaving a connection that is already lost raises: nothing is left to clean up then.
        with contextlib.suppress(BrokerUnavailable):
            await self._stack.aclose()

    # requests ----------------------------------------------------------------------------
    async def call(self, request: Request, within: float = DEFAULT_TIMEOUT) -> Any:
        """Send ``request`` and return its decoded result (see ``shared.rpc.RESULT_TYPES``);
        :class:`NoControllerAnswer` when no reply came ``within`` seconds."""
        reply = await self.reply(request, within)
        if not reply.ok:
            code = cast(ErrorCode, reply.code or "invalid")
            raise RequestRefused(code, reply.error or f"the controller refused it ({code})")
        try:
            return msgspec.json.decode(reply.result, type=RESULT_TYPES[type(request)])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ControllerError(
                f"the controller's answer to {_op(request)} could not be read: {exc}"
            ) from exc

    async def reply(self, request: Request, within: float = DEFAULT_TIMEOUT) -> Reply:
        """The raw :class:`Reply` to ``request``, ok or not."""
        if self._lost:
            raise self._lost
        correlation = secrets.token_bytes(16)
        answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = answered
        try:
            async with asyncio.timeout(within):
                await self._connection.publish(
                    self.root.requests(),
                    encode(request),
                    response_topic=self._reply_topic,
                    correlation=correlation,
                    expiry=REQUEST_EXPIRY,
                )
                return await answered
        except TimeoutError:
            raise NoControllerAnswer(
                f"no controller answered on {self.url} within {seconds(within)} s"
            ) from None
        finally:
            self._pending.pop(correlation, None)

    # events ------------------------------------------------------------------------------
    async def follow_events(self, env: str | None = None) -> EventFeed:
        """Subscribe to ``env``'s events (every environment's with None); the feed gets
        every event published after this returns."""
        feed = EventFeed(env)
        self._feeds.append(feed)
        # Under `broker init` an operator may subscribe the literal filter of every
        # environment's events only (core.acl); the feed keeps ``env``'s.
        topic = self.root.events(env) if env and not self._login else self.root.all_events()
        await self._connection.subscribe(topic)
        return feed

    # the reader --------------------------------------------------------------------------
    async def _pump(self) -> None:
        try:
            async for message in self._connection:
                if message.topic == self._reply_topic:
                    self._take_reply(message)
                else:
                    self._take_event(message.topic, message.payload)
        except BrokerUnavailable as lost:
            self._lose(lost)

    def _take_reply(self, message: Message) -> None:
        correlation = message.correlation
        answered = None if correlation is None else self._pending.pop(correlation, None)
        if answered is None or answered.done():
            return  # the answer to a call that already gave up, or not ours
        try:
            answered.set_result(REPLY.decode(message.payload, limit=MAX_REPLY))
        except DecodeError as exc:
            answered.set_exception(
                ControllerError(f"the controller's answer could not be read: {exc}")
            )

    def _take_event(self, topic: str, payload: bytes) -> None:
        try:
            parsed = self.root.parse(topic)
            if parsed.kind is not TopicKind.EVENTS or parsed.env is None:
                return
            event = EVENT.decode(payload)
            check_env(event.env, parsed.env)
        except (InvalidTopic, DecodeError):
            self.dropped += 1
            return
        for feed in self._feeds:
            feed.put(event)

    def _lose(self, error: BrokerUnavailable) -> None:
        self._lost = error
        for answered in self._pending.values():
            if not answered.done():
                answered.set_exception(error)
        for feed in self._feeds:
            feed.put(error)


async def ask(
    url: BrokerUrl, root: TopicRoot, request: Request, within: float = DEFAULT_TIMEOUT
) -> Any:
    """One request on a connection of its own: its decoded result."""
    async with ControllerClient(url, root, connect_timeout=within) as controller:
        return await controller.call(request, within)


def _op(request: Request) -> str:
    return str(type(request).__struct_config__.tag)


async def _cancel(task: asyncio.Task[None]) -> None:
    await cancel_and_wait(task)
