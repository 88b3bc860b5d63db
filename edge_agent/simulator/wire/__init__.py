"""A minimal asyncio MQTT 5 client, cheap enough to run ten thousand of in one process.

It speaks only what edgeplane needs: CONNECT with a will, SUBSCRIBE, PUBLISH at QoS 0 and 1
(both ways) with properties, PINGREQ and DISCONNECT. Each connection is one
:class:`asyncio.Protocol` and no task of its own; keepalive pings for every connection come
from one shared scheduler, not a timer per client, so an idle connection costs memory and
nothing else::

    async with KeepaliveScheduler() as pinger:
        client = await connect(broker, client_id="dev-a", will=LastWill(topic, payload),
                               on_message=handle, pinger=pinger)
        await client.subscribe("R/env/dev-a/cmd")
        await client.publish(topic, payload, qos=1, retain=True,
                             properties=Properties(message_expiry=30))
        await client.disconnect()

errors      WireError and its subclasses, reason codes as words
fields      MQTT's data representations: variable byte integers, strings, a field reader
properties  MQTT 5 properties
packets     the packets we send (encoders) and receive (types, framing, parsing)
inflight    the QoS 1 requests of one connection awaiting their answer, and its window
client      MqttClient: one connection, an asyncio.Protocol
keepalive   KeepaliveScheduler: keepalive pings for every connection from one task
handshake   connect(): CONNECT, CONNACK and what the broker negotiated
"""

__all__: list[str] = []
