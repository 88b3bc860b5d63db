"""The incidents' book (controller/core/incidents.py): one incident per episode, repeats
counted, acknowledged ones still resolved by their condition, restored without opening
twice. Pure: an injected clock, no broker."""

from __future__ import annotations

import itertools

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.incidents import (
    MAX_STEPS,
    MISSED_THRESHOLD,
    IncidentBook,
    severity_of,
)
from edgeplane.controller.core.presence import Transition
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import (
    Accepted,
    Check,
    CommandRejected,
    Expired,
    Failed,
    Pong,
    Preflight,
    RolledBack,
    Succeeded,
)

ENV = "edge-a"


def book(clock: ManualClock | None = None) -> IncidentBook:
    numbers = itertools.count(1)
    return IncidentBook(clock or ManualClock(), new_id=lambda: f"i-{next(numbers):010x}")


def lost(at: float, reason: str = "connection-lost") -> Transition:
    return Transition(ENV, "online", "offline", reason, at)


def back(at: float) -> Transition:
    return Transition(ENV, "offline", "online", "heartbeat", at)


def test_a_lost_connection_opens_offline_and_coming_back_resolves_it() -> None:
    incidents = book()
    (opened,) = incidents.on_transition(lost(100.0))
    assert opened.edge == "opened"
    incident = opened.incident
    assert (incident.env, incident.kind, incident.severity, incident.state) == (
        ENV,
        "offline",
        "critical",
        "open",
    )
    assert incident.opened == 100.0
    assert incidents.open_count(ENV) == 1
    (resolved,) = incidents.on_transition(back(130.0))
    assert resolved.edge == "resolved"
    assert resolved.incident.id == incident.id
    assert resolved.incident.state == "resolved"
    assert [(s.state, s.note, s.by) for s in resolved.incident.timeline] == [
        ("opened", "went offline unexpectedly (connection-lost)", "controller"),
        ("resolved", "came back", "controller"),
    ]
    assert incidents.open_count(ENV) == 0


def test_a_heartbeat_timeout_is_an_incident_a_clean_stop_is_not() -> None:
    incidents = book()
    assert incidents.on_transition(lost(1.0, "shutdown")) == []
    assert incidents.on_transition(lost(2.0, "retired")) == []
    assert incidents.on_transition(back(3.0)) == []  # nothing open: nothing to resolve
    (opened,) = incidents.on_transition(lost(4.0, "heartbeat-timeout"))
    assert opened.incident.kind == "offline"


def test_a_repeat_while_open_counts_never_opens_a_second() -> None:
    incidents = book()
    first = incidents.on_transition(lost(1.0))[0].incident
    again = incidents.on_transition(lost(2.0))
    assert [e.edge for e in again] == ["repeated"]
    assert again[0].incident.id == first.id
    assert again[0].incident.count == 2
    assert len(incidents) == 1
    incidents.on_transition(back(3.0))
    reopened = incidents.on_transition(lost(4.0))[0]
    assert reopened.edge == "opened"
    assert reopened.incident.id != first.id  # a new episode, a new incident


def test_repeats_past_the_limit_are_counted_not_kept_as_steps() -> None:
    incidents = book()
    for number in range(MAX_STEPS + 50):
        event = CommandRejected(env=ENV, seq=number + 1, reason="bad-signature: no match")
        incidents.on_event(event, float(number))
    (incident,) = incidents.open_in(ENV)
    assert incident.kind == "command-refused"
    assert incident.count == MAX_STEPS + 50
    assert len(incident.timeline) == MAX_STEPS


def test_acknowledged_still_resolves_when_the_condition_ends() -> None:
    clock = ManualClock()
    incidents = book(clock)
    incident = incidents.on_transition(lost(clock.time()))[0].incident
    clock.advance(5)
    acked = incidents.acknowledge(incident.id, "on it", "alice")
    assert acked is not None
    assert (acked.edge, acked.incident.state) == ("acknowledged", "acknowledged")
    assert acked.incident.timeline[-1].by == "alice"
    (resolved,) = incidents.on_transition(back(clock.time()))
    assert resolved.incident.state == "resolved"
    assert [s.state for s in resolved.incident.timeline] == ["opened", "acknowledged", "resolved"]


def test_an_operator_resolves_and_a_resolved_one_cannot_be_acted_on() -> None:
    incidents = book()
    incident = incidents.on_transition(lost(1.0))[0].incident
    resolved = incidents.resolve(incident.id, "cable replaced", "bob")
    assert resolved is not None
    assert resolved.incident.timeline[-1].note == "cable replaced"
    assert incidents.resolve(incident.id, "again", "bob") is None
    assert incidents.acknowledge(incident.id, "late", "bob") is None
    assert incidents.acknowledge("i-nope", "x", "bob") is None
    assert incidents.on_transition(back(2.0)) == []  # nothing open any more


def test_alerts_of_any_kind_open_and_clear() -> None:
    incidents = book()
    for kind in ("flapping", "identity-conflict", "rollout-aborted"):
        raised = incidents.on_alert(AlertEdge(ENV, kind, "raised", 1.0, f"{kind} now"))
        assert [(e.edge, e.incident.kind) for e in raised] == [("opened", kind)]
    # a kind this module has no entry for (resource pressure)
    new_kind = AlertEdge(ENV, "disk-pressure", "raised", 2.0, "disk 97 %")
    (opened,) = incidents.on_alert(new_kind)
    assert (opened.incident.kind, opened.incident.severity) == ("disk-pressure", "warning")
    cleared = AlertEdge(ENV, "disk-pressure", "cleared", 3.0, "disk 60 %")
    assert [e.edge for e in incidents.on_alert(cleared)] == ["resolved"]
    assert incidents.open_count(ENV) == 3
    assert severity_of("identity-conflict") == "critical"


def test_agent_events_open_and_a_success_resolves_them() -> None:
    incidents = book()
    failing = Check(kind="model", name="detector", ok=False, detail="missing")
    assert incidents.on_event(Preflight(env=ENV, seq=1, dep="d-1", ok=False, checks=[failing]), 1.0)
    assert incidents.on_event(Preflight(env=ENV, seq=2, dep="d-1", ok=True), 1.5) == []
    dry_run = Preflight(env=ENV, seq=9, dep="d-8", ok=False, checks=[failing], dry_run=True)
    assert incidents.on_event(dry_run, 1.7) == []  # an operator's check, no incident
    incidents.on_event(Failed(env=ENV, seq=3, dep="d-2", reason="exit 1"), 2.0)
    incidents.on_event(RolledBack(env=ENV, seq=4, dep="d-2", restored="d-0"), 3.0)
    kinds = {i.kind for i in incidents.open_in(ENV)}
    assert kinds == {"preflight-failed", "deployment-failed", "rolled-back"}
    ended = incidents.on_event(Succeeded(env=ENV, seq=5, dep="d-3"), 4.0)
    assert {e.incident.kind for e in ended} == kinds
    assert incidents.open_in(ENV) == []


def test_refused_and_expired_commands_and_an_accepted_one() -> None:
    incidents = book()
    assert incidents.on_event(CommandRejected(env=ENV, seq=1, reason="schema: bad"), 1.0) == []
    (refused,) = incidents.on_event(CommandRejected(env=ENV, seq=2, reason="unsigned: x"), 2.0)
    assert refused.incident.kind == "command-refused"
    (expired,) = incidents.on_event(Expired(env=ENV, seq=3, cmd="c-1", reason="late"), 3.0)
    assert expired.edge == "repeated"
    (taken,) = incidents.on_event(
        Accepted(env=ENV, seq=4, dep="d-9", workflow="w", version="1"), 4.0
    )
    assert taken.edge == "resolved"
    incidents.on_event(Expired(env=ENV, seq=5, cmd="c-2", reason="late"), 5.0)
    (answered,) = incidents.on_event(Pong(env=ENV, seq=6, cmd="c-3"), 6.0)  # env diagnose's
    assert (answered.edge, answered.incident.kind) == ("resolved", "command-refused")


def test_the_controllers_own_expiry_is_no_refusal() -> None:
    incidents = book()
    own = Expired(env=ENV, seq=1, src="controller", dep="d-1", reason="not online in time")
    assert incidents.on_event(own, 1.0) == []


def test_missed_heartbeats_open_at_the_threshold_and_resolve_when_clear() -> None:
    incidents = book()
    assert incidents.on_missed(ENV, None, 1.0) == []
    assert incidents.on_missed(ENV, MISSED_THRESHOLD - 1, 1.0) == []
    (opened,) = incidents.on_missed(ENV, MISSED_THRESHOLD, 2.0)
    assert opened.incident.kind == "heartbeats-missed"
    assert incidents.on_missed(ENV, MISSED_THRESHOLD + 1, 3.0) == []  # the same episode
    assert incidents.on_missed(ENV, 1, 4.0) == []  # not clear yet
    (resolved,) = incidents.on_missed(ENV, 0, 5.0)
    assert resolved.edge == "resolved"


def test_restored_open_incidents_are_not_opened_twice() -> None:
    first = book()
    incident = first.on_transition(lost(1.0))[0].incident
    first.on_alert(AlertEdge(ENV, "flapping", "raised", 2.0, "6 transitions"))
    restored = IncidentBook(ManualClock(), first.open_in(ENV))
    assert restored.open_count(ENV) == 2
    again = restored.on_transition(lost(3.0))
    assert [(e.edge, e.incident.id) for e in again] == [("repeated", incident.id)]
    (resolved,) = restored.on_transition(back(4.0))
    assert resolved.incident.id == incident.id


def test_retiring_resolves_what_is_open() -> None:
    incidents = book()
    incidents.on_transition(lost(1.0))
    incidents.credential_problem(ENV, "rotation failed: broker refused")
    edges = incidents.forget(ENV, "retired")
    assert {e.incident.kind for e in edges} == {"offline", "credential-problem"}
    assert all(e.incident.state == "resolved" for e in edges)
    assert incidents.open_count(ENV) == 0


def test_logins_refused_before_a_connection_open_one_and_a_clean_login_ends_it() -> None:
    incidents = book()
    (opened,) = incidents.on_login(ENV, 3, "not authorised", 1.0)
    assert (opened.edge, opened.incident.kind) == ("opened", "login-refused")
    assert opened.incident.detail == (
        "the broker refused 3 login(s) before this connection: not authorised"
    )
    assert [e.edge for e in incidents.on_login(ENV, 1, "", 2.0)] == ["repeated"]
    (ended,) = incidents.on_login(ENV, 0, "", 3.0)
    assert (ended.edge, ended.incident.state) == ("resolved", "resolved")
    assert incidents.on_login(ENV, 0, "", 4.0) == []  # nothing open: nothing to say


def test_going_offline_ends_missed_heartbeats_even_a_clean_stop() -> None:
    incidents = book()
    incidents.on_missed(ENV, 3, 1.0)
    stop = Transition(ENV, "online", "offline", "shutdown", 2.0)
    (ended,) = incidents.on_transition(stop)
    assert (ended.edge, ended.incident.kind) == ("resolved", "heartbeats-missed")
    assert incidents.open_count(ENV) == 0
