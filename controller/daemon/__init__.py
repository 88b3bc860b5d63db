"""``edgeplane controller run``: the thin shell around the core. Connections (links), the
receive path (intake), store-then-publish (publisher), the retained-state sync, operator
requests, the controller's own status, and the SQLite store (store, schema, rows)."""

__all__: list[str] = []
