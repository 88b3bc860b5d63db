"""What the operator commands share on the client side of the wire: the request client,
the board of views, following a deployment, event text, workflow files, their settings,
argument types and output."""

__all__: list[str] = []
