"""The ``edgeplane`` command line: one thin argparse module per command, wired by
:mod:`edgeplane.controller.cli.main`. Heavy imports wait inside the handlers."""

__all__: list[str] = []
