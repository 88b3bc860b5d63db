"""``deploy FILE --env A --env B ...``: one deployment per environment, shown together.

Each environment's request is answered on its own: one refused (offline, flapping, a
missing model) does not stop the others, and is shown beside them with its reason. Without
``--wait`` the answers are one table (``--json``: a list, a refused one as ``{"env",
"state": "refused", "code", "reason"}``); with ``--wait`` every deployment is followed at
once (:class:`~controller.operator.deploy_follow.DeployFollower`, each on its own
connection), its events printed as they come, then a table of how each ended (``--json``:
the list of the reports ``deploy --wait --json`` prints for one). The exit status is 0
only when every one was sent (without ``--wait``) or succeeded (with it).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from edgeplane.controller.errors import ControllerError, RequestRefused
from edgeplane.controller.operator.client import ControllerClient
from edgeplane.controller.operator.deploy_follow import DeployFollower
from edgeplane.controller.operator.output import print_json, render_table, visible, when
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.errors import BrokerUnavailable
from edgeplane.shared.rpc import DeploymentInfo, DeployRequest
from edgeplane.shared.topics import TopicRoot

__all__ = ["deploy_many"]


async def deploy_many(
    url: BrokerUrl,
    root: TopicRoot,
    within: float,
    as_json: bool,
    requests: list[DeployRequest],
    *,
    follow: bool,
    wait_for: float,
) -> int:
    if follow:
        return await _follow_all(url, root, within, as_json, requests, wait_for)
    answers: list[DeploymentInfo | RequestRefused] = []
    async with ControllerClient(url, root, connect_timeout=within) as ctl:
        for request in requests:
            try:
                answers.append(await ctl.call(request, within=within))
            except RequestRefused as exc:
                answers.append(exc)
    if as_json:
        print_json(
            [_json(request, answer) for request, answer in zip(requests, answers, strict=True)]
        )
    else:
        print(_table(requests, answers))
    refused = [
        (request, answer)
        for request, answer in zip(requests, answers, strict=True)
        if isinstance(answer, RequestRefused)
    ]
    for request, refusal in refused:
        print(f"edgeplane: {request.env}: refused: {visible(refusal.message)}", file=sys.stderr)
    return 1 if refused else 0


async def _follow_all(
    url: BrokerUrl,
    root: TopicRoot,
    within: float,
    as_json: bool,
    requests: list[DeployRequest],
    wait_for: float,
) -> int:
    followers = [DeployFollower(url, root, within, as_json, collect=True) for _ in requests]
    reports = await asyncio.gather(
        *(
            _follow_one(follower, request, wait_for)
            for follower, request in zip(followers, requests, strict=True)
        )
    )
    if as_json:
        print_json(list(reports))
    else:
        header = ("ENV", "ID", "STATE", "REASON")
        rows = [
            (r["env"], r.get("id", "-") or "-", r["state"], r.get("reason", "") or "")
            for r in reports
        ]
        print(render_table(header, rows))
    failed = [r for r in reports if not r["ok"]]
    if failed:
        print(
            f"edgeplane: {len(failed)} of {len(reports)} deployments did not succeed: "
            + ", ".join(f"{r['env']} ({r['state']})" for r in failed),
            file=sys.stderr,
        )
    return 1 if failed else 0


async def _follow_one(
    follower: DeployFollower, request: DeployRequest, wait_for: float
) -> dict[str, Any]:
    try:
        await follower.run(request, follow=True, wait_for=wait_for)
    except RequestRefused as exc:
        print(f"edgeplane: {request.env}: refused: {visible(exc.message)}", file=sys.stderr)
        return {"env": request.env, "state": "refused", "ok": False, "code": exc.code,
                "reason": exc.message}  # fmt: skip
    except (ControllerError, BrokerUnavailable) as exc:
        print(f"edgeplane: {request.env}: {visible(str(exc))}", file=sys.stderr)
        return {"env": request.env, "state": "unknown", "ok": False, "reason": str(exc)}
    assert follower.report is not None  # run reports once it returns
    return follower.report


def _json(request: DeployRequest, answer: DeploymentInfo | RequestRefused) -> Any:
    if isinstance(answer, RequestRefused):
        return {"env": request.env, "state": "refused", "code": answer.code,
                "reason": answer.message}  # fmt: skip
    return answer


def _table(requests: list[DeployRequest], answers: list[DeploymentInfo | RequestRefused]) -> str:
    rows = []
    for request, answer in zip(requests, answers, strict=True):
        if isinstance(answer, RequestRefused):
            rows.append((request.env, "-", "refused", answer.message))
        elif answer.waiting:
            rows.append((answer.env, answer.id, "queued", f"after validation {answer.validation}"))
        elif answer.state == "queued":
            rows.append(
                (answer.env, answer.id, "queued", f"until online, expires {when(answer.expires)}")
            )
        else:
            rows.append(
                (answer.env, answer.id, answer.state, answer.forced and f"forced: {answer.forced}")
            )
    return render_table(("ENV", "ID", "STATE", "DETAIL"), rows)
