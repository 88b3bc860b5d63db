"""``edgeplane env diagnose ID``: the environment's checks in the documented troubleshooting
order (process, network, credentials, resources, compatibility), each PASS, WARN, FAIL or
SKIP with its reason, and the likely cause with a hint. The controller runs them (it sends
the agent a signed ``ping`` and times its answer); ``--timeout`` is each check's time limit
and bounds the wait for the answer.

Exit status: 0 no check failed (warnings included); 1 a check failed (see
:data:`shared.checkup.EXIT_FAILED`), or refused (an unknown or retired environment) or no
answer (one line on stderr); 2 usage errors.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Final

from edgeplane.controller.operator.args import env_id_arg
from edgeplane.controller.operator.session import add_leaf

if TYPE_CHECKING:
    from edgeplane.controller.operator.client import ControllerClient

__all__ = ["add_diagnose"]

MAX_CHECK_LIMIT: Final = 60.0  # seconds: the most a check may take (shared.rpc.EnvDiagnose)
REPLY_MARGIN: Final = 5.0  # seconds on top of the checks' limit to wait for the report


def add_diagnose(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(
        actions,
        "diagnose",
        "check an environment in the troubleshooting order: process, network, "
        "credentials, resources, compatibility",
        _diagnose,
    )
    parser.add_argument("id", metavar="ID", type=env_id_arg, help="the environment id")


async def _diagnose(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json, visible
    from edgeplane.shared.checkup import Report, exit_status, render_text
    from edgeplane.shared.rpc import EnvDiagnose

    limit = min(within, MAX_CHECK_LIMIT)
    request = EnvDiagnose(id=args.id, timeout=limit)
    report: Report = await controller.call(request, within=2 * limit + REPLY_MARGIN)
    if args.json:
        print_json(report)
    else:
        lines = render_text(report).splitlines()
        print("\n".join(visible(line) for line in lines))
    return exit_status(report)
