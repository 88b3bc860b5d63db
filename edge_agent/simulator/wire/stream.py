"""The byte side of one MQTT connection, an :class:`asyncio.Protocol`: writing (with the
transport's back-pressure), framing what arrives into packets, and closing, with the reason
it closed. :class:`~.client.MqttClient` adds the MQTT session on top."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import structlog

from edgeplane.edge_agent.simulator.wire.errors import ConnectionClosed, MalformedPacket, WireError
from edgeplane.edge_agent.simulator.wire.packets import (
    FrameBuffer,
    Packet,
    encode_disconnect,
    parse_packet,
)

__all__ = ["PacketStream"]

log = structlog.get_logger("edgeplane.edge_agent.simulator.wire")


class PacketStream(asyncio.Protocol):
    """One connection's packets; subclasses handle them (:meth:`_handle`) and release what
    waits on the connection when it ends (:meth:`_ended`)."""

    __slots__ = (
        "_can_write",
        "_frames",
        "_gone",
        "_last_sent",
        "_loop",
        "_transport",
        "client_id",
        "closed",
    )

    def __init__(self, client_id: str, max_incoming: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.client_id = client_id
        self._transport: asyncio.Transport | None = None
        self._frames = FrameBuffer(max_incoming)
        self._can_write: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None  # made when someone waits for it
        self._last_sent = 0.0  # loop time of our last write
        self.closed: asyncio.Future[WireError | None] = self._loop.create_future()
        """Done when the connection is gone; its result says why (None: our DISCONNECT)."""

    @property
    def is_closed(self) -> bool:
        return self.closed.done() or self._transport is None or self._transport.is_closing()

    async def wait_closed(self) -> WireError | None:
        """Wait until the connection is gone; return why (None after :meth:`disconnect`)."""
        return await asyncio.shield(self.closed)

    async def disconnect(self, reason_code: int = 0, grace: float = 5.0) -> None:
        """Send DISCONNECT (reason 0: the broker discards the will) and close; wait up to
        ``grace`` seconds for the socket to close."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(encode_disconnect(reason_code))
        self._finish(None)
        gone = self._gone = self._loop.create_future()
        transport.close()  # flushes the DISCONNECT first
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await gone

    def abort(self) -> None:
        """Close the socket without DISCONNECT, so the broker publishes the will."""
        self._finish(ConnectionClosed(f"{self.client_id}: connection aborted"))
        if self._transport is not None:
            self._transport.abort()

    # for subclasses ---------------------------------------------------------------------
    def _handle(self, packet: Packet) -> None:
        raise NotImplementedError

    def _ended(self, failure: WireError) -> None:
        """The connection ended: fail what waits for an answer with ``failure``."""

    def _send(self, packet: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionClosed(f"{self.client_id}: connection closed")
        self._transport.write(packet)
        self._last_sent = self._loop.time()

    def _check_open(self) -> None:
        if self.closed.done():
            why = self.closed.result()
            raise why or ConnectionClosed(f"{self.client_id}: disconnected")

    async def _writable(self) -> None:
        self._check_open()
        if self._can_write is not None:
            await asyncio.shield(self._can_write)
            self._check_open()

    def _protocol_violation(self, error: WireError, reason_code: int) -> None:
        log.warning("protocol violation by the broker", client=self.client_id, error=str(error))
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_disconnect(reason_code))
            self._transport.close()
        self._finish(error)

    def _fail(self, error: WireError) -> None:
        self._finish(error)
        if self._transport is not None:
            self._transport.abort()

    def _finish(self, error: WireError | None) -> None:
        """Record why the connection ended (first reason wins) and fail what waits on it."""
        if self.closed.done():
            return
        self.closed.set_result(error)
        self._ended(error or ConnectionClosed(f"{self.client_id}: disconnected"))
        # Those waiting for the socket to drain look at `closed` when woken.
        if self._can_write is not None:
            _resolve(self._can_write)
        self._can_write = None

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc else ""
        self._finish(ConnectionClosed(f"{self.client_id}: connection closed by the broker{detail}"))
        self._transport = None
        if self._gone is not None:
            _resolve(self._gone)

    def pause_writing(self) -> None:
        if self._can_write is None:
            self._can_write = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            _resolve(self._can_write)
            self._can_write = None

    def data_received(self, data: bytes) -> None:
        try:
            for first_byte, body in self._frames.feed(data):
                if self.closed.done():
                    return
                self._handle(parse_packet(first_byte, body))
        except MalformedPacket as exc:
            self._protocol_violation(exc, 0x81)
        except WireError as exc:
            self._protocol_violation(exc, 0x82)

    def eof_received(self) -> bool | None:
        return None  # close our side too


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
