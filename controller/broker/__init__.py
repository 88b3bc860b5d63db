"""Brokers as child processes: mosquitto and the embedded one, choosing which one ``up``
uses, the state directory of ``up``, and the one child-process supervisor of ``up`` and the
demo."""

__all__: list[str] = []
