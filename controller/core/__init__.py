"""The controller's pure core: presence, flapping, identity, the registry, the deployments
book, the gate and the operations over them, decided from messages and an injected clock.
It imports only the standard library and edgeplane.shared (tests/test_architecture.py)."""

__all__: list[str] = []
