"""The fleet simulator: many edge agents speaking the real edgeplane protocol from one
process (``edge-agent simulate``, the benchmarks). Installed with the ``[sim]`` extra.

fleet         Fleet: the agents of one process, their shared timers and counters
agent         SimulatedAgent: one agent's connection, heartbeats and ways to end
host          what the agents share (AgentSetup) and ask of their fleet (AgentHost)
heartbeats    the fleet's one heartbeat timer and the simulated metrics
command_path  the real agent's outbox, executor and command handler, and the outbox pump
cli           ``edge-agent simulate``
wire          the simulator's own asyncio MQTT 5 client
"""

__all__: list[str] = []
