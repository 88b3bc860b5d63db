"""``python -m bench`` (``make bench``): every benchmark in turn, each in its own broker.

Full scale by default (``--count 10000`` agents; the deploy fan-out's own scale is 500
agents, its goal); ``--count`` and ``--quick`` scale down, ``--only`` picks some. Each
benchmark prints its figures next to their goals (PASS / MISS) and writes JSON under
bench/results/. The exit status is 0 whatever was measured, 1 when a benchmark could not
run at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench import agent_footprint, backlog, deploy_fanout, detection, ingest, restart, rollout
from bench._common import Report, add_common_arguments, machine, run_main

__all__ = ["BENCHES", "main"]

BENCHES: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, Report]]] = {
    "ingest": ingest.run,
    "detection": detection.run,
    "agent_footprint": agent_footprint.run,
    "restart": restart.run,
    "backlog": backlog.run,
    "deploy_fanout": deploy_fanout.run,
    "rollout": rollout.run,
}
# Fleet sizes when --count is not given: the benchmarks' goals are stated for these.
DEFAULT_COUNTS: dict[str, int] = {
    "deploy_fanout": deploy_fanout.GOAL_COUNT,
    "rollout": rollout.GOAL_COUNT,
}
FULL_SCALE = 10_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_common_arguments(parser)
    parser.set_defaults(count=None)  # each benchmark's own scale unless given
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHES), help="run only these (repeatable)"
    )
    return parser


def _defaults(module_add: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module_add(parser)
    return parser.parse_args([])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    failed = []
    adders = {
        "ingest": ingest.add_arguments,
        "detection": detection.add_arguments,
        "agent_footprint": agent_footprint.add_arguments,
        "restart": restart.add_arguments,
        "backlog": backlog.add_arguments,
        "deploy_fanout": deploy_fanout.add_arguments,
        "rollout": rollout.add_arguments,
    }
    for name in args.only or list(BENCHES):
        merged = argparse.Namespace(**{**vars(_defaults(adders[name])), **vars(args)})
        if args.count is None:
            merged.count = DEFAULT_COUNTS.get(name, FULL_SCALE)
        began = time.monotonic()
        if run_main(name, BENCHES[name], merged) != 0:
            failed.append(name)
        print(f"({name}: {time.monotonic() - began:.0f} s)", flush=True)
    if failed:
        print(f"could not run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
