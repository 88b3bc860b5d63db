"""The one place that builds aiomqtt clients for the controller and the operator commands.

MQTT 5 always. Callers catch :class:`aiomqtt.MqttError` only here and in the service's
connection loop, and translate it into :class:`controller.errors.BrokerUnavailable`.
"""

from __future__ import annotations

import ssl
import uuid

import aiomqtt
import paho.mqtt.client
import paho.mqtt.properties

from edgeplane.shared.broker_url import BrokerUrl

__all__ = ["make_client", "unique_client_id"]


def unique_client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_client(
    url: BrokerUrl,
    identifier: str,
    *,
    will: aiomqtt.Will | None = None,
    keepalive: int = 30,
    timeout: float = 10.0,
    clean_start: bool | None = None,
    properties: paho.mqtt.properties.Properties | None = None,
) -> aiomqtt.Client:
    """A client for ``url`` (TLS with the system's trust store for ``mqtts://``).
    ``clean_start=False`` with a CONNECT ``SessionExpiryInterval`` keeps a persistent
    session (the controller's event connection)."""
    return aiomqtt.Client(
        url.host,
        url.port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        keepalive=keepalive,
        timeout=timeout,
        tls_context=ssl.create_default_context() if url.tls else None,
        clean_start=(
            paho.mqtt.client.MQTT_CLEAN_START_FIRST_ONLY if clean_start is None else clean_start
        ),
        properties=properties,
        # No TCP_NODELAY: it cut view latency (~40 ms of Nagle + delayed ACK) but cost
        # about 20 % of ingest throughput (every PUBACK its own segment), and the lag goal
        # is met without it (docs/performance.md).
    )
