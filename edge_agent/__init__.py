"""The edgeplane edge agent: announces a runtime target's presence over MQTT and answers
its commands. Light by design: paho-mqtt, psutil, msgspec and the standard library (it
logs through ``logging``), one thread.

cli          ``edge-agent run`` / ``edge-agent simulate``
config       settings (flag > EDGEPLANE_* > --config TOML > default)
agent        the loop, handing each turn to the parts below
link         connections, the will, online, heartbeats, re-assertion, reconnecting
session      the paho MQTT 5 session (the only module that touches paho)
takeover     telling a takeover of the identity from other lost connections
event_pump   events from the outbox to the broker;  outbox  the durable events
commands     what arrives on ``cmd``;  live_config  updates from the controller
stopping     the clean stop;  retirement  the end of an environment
heartbeat    online/offline messages;  metrics  host samples;  inventory  the models held
state        the bdseq, overrides and retired marker in the state directory
waker        signal wake-ups;  errors  AgentError and its subclasses
execution/   the executor (loaded at the first deployment: execution/ondemand.py)
"""

__all__: list[str] = []
