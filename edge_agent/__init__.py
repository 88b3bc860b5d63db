"""The edgeplane edge agent: announces a runtime target's presence over MQTT and answers
its commands. Light by design: paho-mqtt, psutil, msgspec and the standard library, one thread.

cli        ``edge-agent run`` / ``edge-agent simulate``
config     settings (flag > EDGEPLANE_* > --config TOML > default)
agent      the loop: connections, heartbeats, re-assertion, clean stop
session    the paho MQTT 5 session (the only module that touches paho)
takeover   telling a takeover of the identity from other lost connections
heartbeat  online/offline messages;  metrics  psutil samples;  commands  cmd handling
state      the bdseq kept in the state directory;  waker  signal wake-ups
errors     AgentError and its subclasses
"""

__all__: list[str] = []
