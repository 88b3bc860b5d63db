"""The deployment gate: every refusal with its code and its sentence, queueing, sending
(pure)."""

from __future__ import annotations

from typing import Any

import pytest

from edgeplane.controller.core.gate import Queue, Refuse, Send, judge_deploy, missing_models
from edgeplane.controller.core.presence import EnvRecord
from edgeplane.controller.core.registry import Environment
from edgeplane.shared.workflow import ModelNeed, Requires, Step, Workflow

NOW = 1_764_230_400.0  # 2025-11-27T08:00:00Z
RECORD = Environment("edge-a", "default", "prod", "plant", "vision", created=NOW - 3600)
ONLINE = EnvRecord("edge-a", "online", since=NOW - 60, last_seen=NOW - 1, interval=10)
OFFLINE = EnvRecord(
    "edge-a", "offline", since=NOW - 120, reason="connection-lost", last_seen=NOW - 130
)


def workflow(*models: tuple[str, str]) -> Workflow:
    return Workflow(
        name="vision-inspect",
        version="1.4.0",
        steps=[Step(name="inspect", run=["true"])],
        requires=Requires(models=[ModelNeed(name, version) for name, version in models]),
    )


def judge(
    record: Environment | None = RECORD,
    presence: EnvRecord | None = ONLINE,
    models: dict[str, list[str]] | None = None,
    flow: Workflow | None = None,
    **options: Any,
) -> Send | Queue | Refuse:
    settings: dict[str, Any] = {"when_online": False, "dry_run": False, "ttl": 600.0}
    return judge_deploy(
        "edge-a", record, presence, models, flow or workflow(), now=NOW, **{**settings, **options}
    )


def test_an_online_registered_environment_gets_it_now() -> None:
    assert judge() == Send()


def test_an_unknown_environment_is_refused_with_how_to_create_it() -> None:
    decision = judge(record=None, presence=None)
    assert decision == Refuse(
        "not-found",
        "no environment 'edge-a'; create it with: edgeplane env create edge-a --stage dev "
        "--location LOCATION --purpose PURPOSE",
    )


def test_an_unregistered_agent_is_refused_even_when_online() -> None:
    decision = judge(record=None, presence=ONLINE, when_online=True)
    assert isinstance(decision, Refuse)
    assert decision.code == "not-found"
    assert "'edge-a' is not registered" in decision.message


def test_a_retired_environment_is_refused() -> None:
    retired = Environment("edge-a", "default", "prod", "p", "v", created=NOW, retired=NOW)
    decision = judge(record=retired, when_online=True)
    assert decision == Refuse("retired", "environment 'edge-a' was retired at 2025-11-27T08:00:00Z")


def test_an_offline_environment_is_refused_with_its_times_and_the_way_to_queue() -> None:
    decision = judge(presence=OFFLINE)
    assert decision == Refuse(
        "offline",
        "environment 'edge-a' is offline since 2025-11-27T07:58:00Z (last heartbeat "
        "2025-11-27T07:57:50Z); add --when-online to queue it",
    )


def test_a_never_seen_environment_is_refused_as_offline() -> None:
    decision = judge(presence=None)
    assert isinstance(decision, Refuse)
    assert decision.code == "offline"
    assert decision.message == (
        "environment 'edge-a' has never been online (no agent has connected as it); "
        "add --when-online to queue it"
    )


@pytest.mark.parametrize("presence", [OFFLINE, None])
def test_when_online_queues_with_the_ttl(presence: EnvRecord | None) -> None:
    assert judge(presence=presence, when_online=True, ttl=90.0) == Queue(NOW + 90.0)


FLAPPING = EnvRecord("edge-a", "online", since=NOW, last_seen=NOW, flapping=True)


def test_force_sends_to_a_flapping_environment_and_names_the_refusal_overridden() -> None:
    assert judge(presence=FLAPPING, force=True) == Send(overridden="flapping")
    flapping_offline = EnvRecord("edge-a", "offline", since=NOW, last_seen=NOW - 30, flapping=True)
    queued = judge(presence=flapping_offline, force=True, when_online=True, ttl=60.0)
    assert queued == Queue(NOW + 60.0, overridden="flapping")


def test_force_on_a_steady_environment_overrides_nothing() -> None:
    assert judge(force=True) == Send()


@pytest.mark.parametrize(
    ("record", "presence", "code"),
    [
        (None, None, "not-found"),
        (Environment("edge-a", "default", "prod", "p", "v", created=NOW, retired=NOW), ONLINE,
         "retired"),
        (RECORD, OFFLINE, "offline"),
        (RECORD, None, "offline"),
        (RECORD, EnvRecord("edge-a", "offline", since=NOW, last_seen=NOW - 30, flapping=True),
         "offline"),
    ],
)  # fmt: skip
def test_force_never_overrides_unknown_retired_or_offline(
    record: Environment | None, presence: EnvRecord | None, code: str
) -> None:
    decision = judge(record=record, presence=presence, force=True)
    assert isinstance(decision, Refuse)
    assert decision.code == code


def test_force_does_not_override_a_missing_model() -> None:
    decision = judge(presence=FLAPPING, models={}, flow=workflow(("m", ">=1")), force=True)
    assert isinstance(decision, Refuse)
    assert decision.code == "missing-model"


def test_the_flapping_refusal_says_how_to_force_it() -> None:
    decision = judge(presence=FLAPPING)
    assert isinstance(decision, Refuse)
    assert "(or --force --reason TEXT)" in decision.message


def test_a_flapping_environment_is_refused_online_or_not() -> None:
    flapping = EnvRecord("edge-a", "online", since=NOW, last_seen=NOW, flapping=True)
    for when_online in (False, True):
        decision = judge(presence=flapping, when_online=when_online)
        assert isinstance(decision, Refuse)
        assert decision.code == "flapping"
        assert "'edge-a' is flapping" in decision.message


def test_a_missing_model_is_refused_naming_what_the_environment_has() -> None:
    flow = workflow(("defect-detector", ">=2.1,<3"))
    decision = judge(models={"defect-detector": ["1.0"]}, flow=flow)
    assert decision == Refuse(
        "missing-model",
        "model defect-detector >=2.1,<3 is not on edge-a (has: defect-detector 1.0)",
    )


def test_a_matching_model_version_passes() -> None:
    flow = workflow(("defect-detector", ">=2.1,<3"), ("ocr", ""))
    models = {"defect-detector": ["1.0", "2.4.1"], "ocr": ["0.1"]}
    assert judge(models=models, flow=flow) == Send()


def test_every_missing_model_is_named() -> None:
    needs = [ModelNeed("a", ">=2"), ModelNeed("b", ""), ModelNeed("c", "==1")]
    assert missing_models("edge-a", needs, {"a": ["1.5", "not-a-version"], "c": ["1.0"]}) == [
        "model a >=2 is not on edge-a (has: a 1.5, not-a-version)",
        "model b is not on edge-a (it has no b)",
    ]
    assert missing_models("edge-a", needs[1:2], None) == [
        "model b is not on edge-a (it has reported no models)"
    ]


def test_a_bad_version_specifier_is_invalid() -> None:
    decision = judge(models={"a": ["1"]}, flow=workflow(("a", ">>2")))
    assert isinstance(decision, Refuse)
    assert decision.code == "invalid"
    assert "requires.models" in decision.message


def test_a_dry_run_leaves_the_models_to_the_agents_preflight() -> None:
    flow = workflow(("defect-detector", ">=2.1,<3"))
    assert judge(models={}, flow=flow, dry_run=True) == Send()
    assert isinstance(judge(presence=OFFLINE, dry_run=True), Refuse)  # but not offline
