"""``edgeplane events [--env ID] [--dep ID] [--follow]``: the controller's operations log,
oldest first, one readable line per event; with ``--follow``, then every new event as it
arrives, until Ctrl-C or SIGTERM (exit 0).

With ``--follow`` the events topic is subscribed before the log is read, so nothing falls
between the two; an event both logged and received live is printed once (by env, src, seq).
A connection lost while following is made again, and what was logged meanwhile printed.
``--json`` prints the log as one JSON array, or with ``--follow`` one JSON object per line
(``id`` and ``at`` are null for events received live).

With ``--env`` (and no ``--dep``) the environment's presence transitions and alert edges
are shown beside its events, in one time order. ``--json`` stays the event log as it was
(its consumers keep working) unless ``--timeline`` is given too: then each entry has
``entry`` (``event``, ``transition`` or ``alert``); an event entry is as before (``id``,
``at``, ``event``), a transition carries ``from_status``, ``to_status``, ``reason``, an
alert ``kind``, ``state``, ``detail``. With ``--follow`` they are shown up to the start;
what follows live is events.

An ``--env`` the controller does not know (no record, no agent seen under it, nothing
logged) is an error, not an empty log: an unregistered agent's id is known until ``env
forget``.

Exit status: 0; 1 no answer, the connection was lost, or an unknown ``--env``; 2 usage
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from edgeplane.controller.operator.args import StoreOnce, add_operator_flags, env_id_arg
from edgeplane.controller.operator.settings import load_operator_settings

if TYPE_CHECKING:
    from edgeplane.controller.operator.client import ControllerClient, EventFeed
    from edgeplane.shared.messages import Event
    from edgeplane.shared.rpc import LoggedEvent, TimelineEntry

__all__ = ["add_parser", "event_line", "timeline_line"]

PAGE: Final = 200  # events per event-list request
RETRY_PAUSE: Final = 1.0  # seconds before the first attempt to connect again; doubling ...
RETRY_PAUSE_CAP: Final = 5.0  # ... up to this


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "events",
        help="print the operations log (and follow it)",
        description="Print the controller's operations log, oldest first; with --follow, "
        "then new events as they arrive, until Ctrl-C.",
    )
    parser.add_argument(
        "--env", type=env_id_arg, action=StoreOnce, help="only this environment's events"
    )
    parser.add_argument(
        "--dep", default="", action=StoreOnce, metavar="ID", help="only this deployment's events"
    )
    parser.add_argument("--follow", "-f", action="store_true", help="then print new events")
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="with --env and --json: the presence transitions and alerts as entries too",
    )
    add_operator_flags(parser)
    parser.set_defaults(handler=events, parser=parser)


def events(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.client import ControllerClient

    if args.timeline and (not args.env or args.dep):
        args.parser.error("--timeline needs --env (and no --dep): it is one environment's")
    settings = load_operator_settings(args)

    def connect() -> ControllerClient:
        return ControllerClient(
            settings.broker, settings.topic_root, connect_timeout=settings.timeout
        )

    async def session() -> int:
        if not args.follow:
            async with connect() as controller:
                logged = await _read_log(controller, args, settings.timeout, after=0)
                timeline = await _read_timeline(controller, args, settings.timeout)
            _print_log(logged, args.json, timeline)
            return 0
        with _stop_on_signals() as stop:
            await _follow_log(connect, args, settings.timeout, stop)
        return 0

    return asyncio.run(session())


async def _follow_log(
    connect: Callable[[], ControllerClient],
    args: argparse.Namespace,
    within: float,
    stop: asyncio.Event,
) -> None:
    """The log, then live events, until ``stop``. A connection lost later is made again
    (the one reconnect loop: pauses from :data:`RETRY_PAUSE` up to :data:`RETRY_PAUSE_CAP`
    seconds), and the log read again from where it was, so what was logged meanwhile is
    printed too; only a first connection that fails ends it."""
    from edgeplane.controller.errors import BrokerUnavailable, NoControllerAnswer
    from edgeplane.controller.reconnect import Reconnect, Retry
    from edgeplane.shared.backoff import Backoff

    seen: set[tuple[str, str, int]] = set()
    after = 0
    first = True

    def retrying(retry: Retry) -> None:
        print(f"edgeplane: {retry.error}; trying again", file=sys.stderr, flush=True)

    reconnect = Reconnect(
        backoff=Backoff(initial=RETRY_PAUSE, cap=RETRY_PAUSE_CAP),
        stop=stop,
        retry_on=(BrokerUnavailable, NoControllerAnswer),
        first_must_succeed=True,
        on_retry=retrying,
    )

    async def follow(controller: ControllerClient) -> None:
        nonlocal after, first
        feed = await controller.follow_events(args.env)
        logged = await _read_log(controller, args, within, after=after)
        timeline = await _read_timeline(controller, args, within) if first else []
        first = False
        from edgeplane.shared.rpc import TimelineEntry as TimelineEntryType

        for item in _merged(logged, timeline):
            if isinstance(item, TimelineEntryType):
                _print_timeline_entry(item, args.json)
                continue
            after = item.id
            _print_new(item.id, item.at, item.event, seen, args)
        reconnect.settled()
        await _print_live(feed, seen, args, stop)

    await reconnect.run(connect, follow)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM (from the start, so no Ctrl-C is a traceback)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _read_log(
    controller: ControllerClient, args: argparse.Namespace, within: float, *, after: int
) -> list[LoggedEvent]:
    """Every logged event with an id above ``after``, page by page."""
    from edgeplane.shared.rpc import EventList

    logged: list[LoggedEvent] = []
    while True:
        request = EventList(env=args.env or "", dep=args.dep, after=after, limit=PAGE)
        page: list[LoggedEvent] = await controller.call(request, within=within)
        logged += page
        if not page:  # a short page may only mean large events: the end is an empty one
            return logged
        after = page[-1].id


async def _read_timeline(
    controller: ControllerClient, args: argparse.Namespace, within: float
) -> list[TimelineEntry]:
    """``--env``'s transitions and alert edges (none for ``--dep`` or the whole log)."""
    from edgeplane.shared.rpc import EnvTimeline

    if not args.env or args.dep or (args.json and not args.timeline):
        return []
    entries: list[TimelineEntry] = await controller.call(EnvTimeline(env=args.env), within=within)
    return entries


def _merged(
    logged: list[LoggedEvent], timeline: list[TimelineEntry]
) -> list[LoggedEvent | TimelineEntry]:
    """Both in one time order (stable: an event before a transition of the same time)."""
    items: list[LoggedEvent | TimelineEntry] = [*logged, *timeline]
    return sorted(items, key=lambda item: item.at)


async def _print_live(
    feed: EventFeed, seen: set[tuple[str, str, int]], args: argparse.Namespace, stop: asyncio.Event
) -> None:
    """Print new events until ``stop`` is set."""
    from edgeplane.controller.tasks import cancel_and_wait

    stopped = asyncio.create_task(stop.wait())
    try:
        while True:
            arrived = asyncio.create_task(feed.next())
            await asyncio.wait({arrived, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped.done():
                await cancel_and_wait(arrived)
                return
            _print_new(None, time.time(), arrived.result(), seen, args)
    finally:
        stopped.cancel()


def _print_new(
    entry_id: int | None,
    at: float,
    event: Event,
    seen: set[tuple[str, str, int]],
    args: argparse.Namespace,
) -> None:
    """Print ``event`` unless it was printed before (by env, src, seq) or is another
    deployment's."""
    key = (event.env, event.src, event.seq)
    if key in seen or (args.dep and event.dep != args.dep):
        return
    seen.add(key)
    _print_entry(entry_id, at, event, args.json)


def _print_log(
    logged: list[LoggedEvent], as_json: bool, timeline: list[TimelineEntry] | None = None
) -> None:
    from edgeplane.controller.operator.output import print_json

    if not timeline:
        if as_json:
            print_json(logged)
        elif not logged:
            print("no events")
        else:
            for entry in logged:
                print(event_line(entry.at, entry.event))
        return
    from edgeplane.shared.rpc import TimelineEntry as TimelineEntryType

    merged = _merged(logged, timeline)
    if as_json:
        print_json([_json_entry(item) for item in merged])
        return
    for item in merged:
        if isinstance(item, TimelineEntryType):
            print(timeline_line(item))
        else:
            print(event_line(item.at, item.event))


def _json_entry(item: LoggedEvent | TimelineEntry) -> dict[str, object]:
    import msgspec

    from edgeplane.shared.rpc import TimelineEntry as TimelineEntryType

    if isinstance(item, TimelineEntryType):
        built: dict[str, object] = msgspec.to_builtins(item)
        return built
    return {"entry": "event", **msgspec.to_builtins(item)}


def _print_timeline_entry(entry: TimelineEntry, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_json_entry(entry), separators=(",", ":")))
    else:
        print(timeline_line(entry))
    sys.stdout.flush()


def timeline_line(entry: TimelineEntry) -> str:
    """``2026-11-27 08:01:02  edge-a  -  offline (connection-lost), was online`` or
    ``...  -  alert flapping raised: 6 transitions in 300 s``"""
    from edgeplane.controller.operator.output import visible

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.at))
    if entry.entry == "transition":
        why = f" ({entry.reason})" if entry.reason else ""
        text = f"{entry.to_status}{why}, was {entry.from_status}"
    else:
        detail = f": {entry.detail}" if entry.detail else ""
        text = f"alert {entry.kind} {entry.state}{detail}"
    return f"{stamp}  {entry.env}  -  {visible(text)}"


def _print_entry(entry_id: int | None, at: float, event: Event, as_json: bool) -> None:
    if as_json:
        import msgspec

        line = {"id": entry_id, "at": at, "event": msgspec.to_builtins(event)}
        print(json.dumps(line, separators=(",", ":")))
    else:
        print(event_line(at, event))
    sys.stdout.flush()


def event_line(at: float, event: Event) -> str:
    """``2026-11-27 08:01:02  edge-a  d-1f2e  step 1 inspect finished: exit 0 after 0.3 s``"""
    from edgeplane.controller.operator.event_text import describe
    from edgeplane.controller.operator.output import visible

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    about = visible(event.dep or event.cmd or "-")
    return f"{stamp}  {event.env}  {about}  {describe(event)}"
