"""``edgeplane demo``: a private fleet (broker, controller, agents) and the story told
with it."""

__all__: list[str] = []
