"""The edgeplane controller: the control plane (``edgeplane``). Its folders say what a module is:

core/      pure decisions over messages and a clock (stdlib and edgeplane.shared only)
daemon/    ``edgeplane controller run``: the I/O shell around the core (MQTT, SQLite)
operator/  the client side of the operator commands (requests, views, following)
cli/       the argparse commands, one module each
broker/    starting, finding and supervising brokers (mosquitto, the embedded one)
demo/      ``edgeplane demo``
mqtt.py    the one module that touches aiomqtt and paho;  reconnect.py  the one loop
errors.py  the exception tree

The commands and topics are the interface (docs/); no Python API is exported here.
"""

__all__: list[str] = []
