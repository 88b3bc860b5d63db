"""The webhook (--notify-url): the pure queue and retry rules, and the notifier against a
local HTTP server started by the test."""

from __future__ import annotations

import asyncio
import base64
import random
import socket

import msgspec
import pytest
from structlog.testing import capture_logs

from edgeplane.controller.core.notices import (
    NoticeQueue,
    RetryPolicy,
    check_notify_url,
    public_url,
)
from edgeplane.controller.daemon.notifier import USER_AGENT, Notifier
from edgeplane.controller.daemon.settings import load_settings
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.notices import IncidentNotice
from edgeplane.shared.rpc import IncidentInfo
from tests.support.webhook import webhook

FAST = RetryPolicy(max_tries=3, max_age=30.0, initial=0.01, cap=0.05)


# --- pure ---------------------------------------------------------------------------------
def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    queue: NoticeQueue[int] = NoticeQueue(3)
    assert [queue.put(n) for n in range(5)] == [None, None, None, 0, 1]
    assert queue.dropped == 2
    assert [queue.take() for _ in range(4)] == [2, 3, 4, None]


def test_retry_verdicts() -> None:
    policy = RetryPolicy(max_tries=3, max_age=60.0)
    assert policy.verdict(200, 1, 0.0, 1.0) == "sent"
    assert policy.verdict(204, 3, 0.0, 1.0) == "sent"
    assert policy.verdict(None, 1, 0.0, 1.0) == "retry"  # connection refused, time-out
    assert policy.verdict(500, 1, 0.0, 1.0) == "retry"
    assert policy.verdict(503, 2, 0.0, 1.0) == "retry"
    assert policy.verdict(429, 1, 0.0, 1.0) == "retry"
    assert policy.verdict(400, 1, 0.0, 1.0) == "give-up"  # the same next time
    assert policy.verdict(301, 1, 0.0, 1.0) == "give-up"
    assert policy.verdict(500, 3, 0.0, 1.0) == "give-up"  # out of tries
    assert policy.verdict(500, 1, 59.5, 1.0) == "give-up"  # the next try would be too old


def notice(incident_id: str) -> IncidentNotice:
    incident = IncidentInfo(
        id=incident_id,
        env="dev-a",
        kind="identity-conflict",
        severity="critical",
        state="open",
        opened=100.0,
        updated=100.0,
        detail="two boots",
    )
    return IncidentNotice(edge="opened", incident=incident)


def test_retry_delays_double_up_to_the_cap_jittered() -> None:
    backoff = RetryPolicy(initial=1.0, cap=8.0).backoff(random.Random(7))
    delays = [backoff.next_delay() for _ in range(7)]
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_an_incident_notice_is_tagged_incident() -> None:
    body = msgspec.json.decode(msgspec.json.encode(notice("i-1")))
    assert body["type"] == "incident"
    assert (body["edge"], body["incident"]["id"], body["incident"]["kind"]) == (
        "opened",
        "i-1",
        "identity-conflict",
    )


def test_urls_checked_and_shown_without_the_password() -> None:
    assert check_notify_url("https://hooks.example.com/x?a=1") == "https://hooks.example.com/x?a=1"
    for bad in ("ftp://u:secret@host/x", "hooks.example.com", "http://", "http://h:99999/"):
        with pytest.raises(ValueError) as caught:
            check_notify_url(bad)
        assert "secret" not in str(caught.value)
    assert public_url("https://u:secret@h.example:8443/p?token=s") == "https://h.example:8443/p"


def test_a_bad_notify_url_is_a_settings_error_naming_it() -> None:
    with pytest.raises(SettingsError, match="--notify-url") as caught:
        load_settings({"notify_url": "mqtt://user:hunter2@x"}, environ={})
    assert "hunter2" not in str(caught.value)
    settings = load_settings({}, environ={"EDGEPLANE_NOTIFY_URL": "http://127.0.0.1:9/h"})
    assert settings.notify_url == "http://127.0.0.1:9/h"
    assert load_settings({}, environ={}).notify_url is None


# --- against a local server ---------------------------------------------------------------
async def test_a_notice_is_posted_as_json_with_basic_auth_and_user_agent() -> None:
    with webhook() as hook:
        async with Notifier(hook.url(login="ops:s3cret"), policy=FAST) as notifier:
            notifier.notify(notice("i-1"))
            [got] = await hook.wait_received()
            await asyncio.wait_for(notifier.settled(), 10)
        assert notifier.counts.sent == 1
    assert got.path == "/hook"
    assert got.body == msgspec.to_builtins(notice("i-1"))
    assert got.body["type"] == "incident"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == USER_AGENT
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(b"ops:s3cret").decode()


async def test_500_then_200_is_delivered_after_a_retry() -> None:
    with webhook(answers=[500, 503]) as hook:
        async with Notifier(hook.url(), policy=FAST) as notifier:
            notifier.notify({"type": "incident", "id": "i-1"})  # any body goes
            [got] = await hook.wait_received()
            await asyncio.wait_for(notifier.settled(), 10)
        assert got.body == {"type": "incident", "id": "i-1"}
        assert hook.tries == 3
        assert (notifier.counts.sent, notifier.counts.failed) == (1, 0)


async def test_a_4xx_is_given_up_at_once_counted_and_logged() -> None:
    with webhook(answers=[404]) as hook, capture_logs() as logs:
        async with Notifier(hook.url(login="u:pw-secret"), policy=FAST) as notifier:
            notifier.notify({"type": "alert"})
            await hook.wait_tries(1)
            await asyncio.wait_for(notifier.settled(), 10)
        assert hook.tries == 1
        assert notifier.counts.failed == 1
    [line] = [e for e in logs if e["event"] == "webhook notice given up"]
    assert line["status"] == 404
    assert line["tries"] == 1
    assert "pw-secret" not in repr(logs)


async def test_a_dead_endpoint_is_given_up_after_bounded_tries_never_raising() -> None:
    port = _free_port()  # nothing listens there
    with capture_logs() as logs:
        async with Notifier(f"http://user:topsecret@127.0.0.1:{port}/h", policy=FAST) as notifier:
            for n in range(3):
                notifier.notify({"type": "alert", "n": n})
            await asyncio.wait_for(notifier.settled(), 10)
        assert notifier.counts.sent == 0
        assert notifier.counts.failed == 3
    given_up = [e for e in logs if e["event"] == "webhook notice given up"]
    assert len(given_up) == 3
    assert all(e["tries"] == 3 for e in given_up)
    assert given_up[0]["url"] == f"http://127.0.0.1:{port}/h"
    assert "topsecret" not in repr(logs)


async def test_a_full_queue_drops_the_oldest_while_a_slow_server_holds_the_worker() -> None:
    with webhook(delay=0.5) as hook, capture_logs() as logs:
        async with Notifier(hook.url(), policy=FAST, queue_size=2) as notifier:
            notifier.notify({"type": "alert", "n": 0})
            await hook.wait_tries(1)  # the worker waits for the slow server now
            loop = asyncio.get_running_loop()
            started = loop.time()
            for n in range(1, 6):
                notifier.notify({"type": "alert", "n": n})
            assert loop.time() - started < 0.05  # notify never waits
            await hook.wait_received(3)
        assert notifier.counts.dropped == 3
    assert [r.body["n"] for r in hook.received] == [0, 4, 5]  # the oldest queued dropped
    assert len([e for e in logs if e["event"] == "webhook queue full: oldest notice dropped"]) == 3


async def test_a_server_slower_than_the_timeout_is_a_failed_try() -> None:
    with webhook(delay=1.0) as hook:
        policy = RetryPolicy(max_tries=1)
        async with Notifier(hook.url(), timeout=0.2, policy=policy) as notifier:
            notifier.notify({"type": "alert"})
            await asyncio.wait_for(notifier.settled(), 10)
        assert notifier.counts.failed == 1
        assert hook.tries == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
