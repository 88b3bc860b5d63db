"""``edge-agent doctor``: the gateway's own checks, in the documented troubleshooting order
(process, network, credentials, resources, workflows), and ``--bundle`` for support.

Loaded only by ``edge-agent doctor``: the running agent never imports it. ``checks`` holds
the pure decisions over what the probes found, ``probes`` the I/O, ``runner`` the order,
the dependencies and the time limit of each check, ``bundle`` the tarball, ``command`` the
command itself.
"""

__all__: list[str] = []
