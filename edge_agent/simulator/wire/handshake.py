"""Opening a connection: the socket, CONNECT, the broker's CONNACK and what it negotiated."""

from __future__ import annotations

import asyncio
import ssl

from edgeplane.edge_agent.simulator.wire.client import MessageHandler, MqttClient
from edgeplane.edge_agent.simulator.wire.errors import ConnackRefused, WireError, describe_reason
from edgeplane.edge_agent.simulator.wire.keepalive import KeepaliveScheduler
from edgeplane.edge_agent.simulator.wire.packets import (
    DEFAULT_MAX_INCOMING,
    ConnAck,
    LastWill,
    encode_connect,
)
from edgeplane.edge_agent.simulator.wire.properties import Properties
from edgeplane.shared.broker_url import BrokerUrl

__all__ = ["connect"]


async def connect(
    broker: BrokerUrl,
    *,
    client_id: str,
    keepalive: int = 30,
    will: LastWill | None = None,
    on_message: MessageHandler | None = None,
    pinger: KeepaliveScheduler | None = None,
    inflight: int = 20,
    connect_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    max_incoming: int = DEFAULT_MAX_INCOMING,
) -> MqttClient:
    """Open a connection with a clean start and wait for a successful CONNACK.

    ``pinger`` sends the keepalive pings; without one the connection declares keepalive 0
    (none). ``inflight`` bounds the QoS 1 publishes awaiting PUBACK (further publishes wait),
    lowered to the broker's Receive Maximum. Raises :class:`ConnackRefused` for a refusal,
    :class:`WireError` when the broker cannot be reached within ``connect_timeout``.
    """
    if inflight < 1:
        raise WireError(f"the in-flight window must be at least 1, not {inflight}")
    keepalive = keepalive if pinger is not None else 0
    client = MqttClient(client_id, on_message, inflight, max_incoming)
    packet = encode_connect(
        client_id,
        keepalive,
        will=will,
        properties=Properties(maximum_packet_size=max_incoming),
    )
    if broker.tls and ssl_context is None:
        ssl_context = ssl.create_default_context()
    connack = await _open(client, broker, packet, ssl_context, within=connect_timeout)
    if connack.reason_code >= 0x80:
        client.abort()
        raise ConnackRefused(
            f"{client_id}: {broker} refused the connection: "
            f"{describe_reason(connack.reason_code, connack.properties.reason_string)}",
            connack.reason_code,
        )
    client.accept(connack, keepalive)
    if pinger is not None and client.keepalive:
        pinger.add(client)
    return client


async def _open(
    client: MqttClient,
    broker: BrokerUrl,
    connect_packet: bytes,
    ssl_context: ssl.SSLContext | None,
    *,
    within: float,
) -> ConnAck:
    """The socket, CONNECT and the broker's CONNACK ``within`` that many seconds; on any
    failure the client is abandoned."""
    try:
        async with asyncio.timeout(within):
            await asyncio.get_running_loop().create_connection(
                lambda: client,
                broker.host,
                broker.port,
                ssl=ssl_context,
                server_hostname=broker.host if ssl_context else None,
            )
            return await client.open(connect_packet)
    except TimeoutError:
        client.abandon()
        raise WireError(f"{client.client_id}: no CONNACK from {broker} within {within}s") from None
    except OSError as exc:
        client.abandon()
        reason = exc.strerror or exc
        raise WireError(f"{client.client_id}: cannot connect to {broker}: {reason}") from exc
    except BaseException:
        client.abandon()
        raise
