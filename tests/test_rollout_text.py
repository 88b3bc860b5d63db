"""How a rollout reads: the plan, the status with progress bars, the lines of a follow."""

from __future__ import annotations

import msgspec

from edgeplane.controller.core.rollout import RolloutSettings, new_run
from edgeplane.controller.core.rollout_plan import plan_waves
from edgeplane.controller.operator.rollout_text import changes, plan_text, progress_bar, status_text
from edgeplane.shared.rpc import RolloutInfo
from edgeplane.shared.workflow import Step, Workflow

WORKFLOW = Workflow(name="app", version="2.0.0", steps=[Step(name="s", run=["true"])])


def info(envs: list[str]) -> RolloutInfo:
    settings = RolloutSettings(waves=("1", "100%"), bake=0.0)
    run = new_run("r-1", WORKFLOW, {"ring": "a"}, settings, plan_waves(envs, settings.waves), 0)
    return run.info()


def test_the_plan_names_each_waves_environments_in_order() -> None:
    text = plan_text(info(["b", "a", "c"]))
    assert "rollout r-1: app 2.0.0 to 3 environment(s) matching ring=a" in text
    assert "wave 1 (1): a\n  wave 2 (2): b, c" in text


def test_a_plan_too_large_for_one_answer_says_how_many_more() -> None:
    full = info([f"e{i}" for i in range(5)])
    cut = msgspec.structs.replace(full, targets=full.targets[:3])
    assert "wave 2 (4): e1, e2 and 2 more" in plan_text(cut)


def test_status_shows_waves_with_progress_and_every_target() -> None:
    text = status_text(info(["a", "b"]), now=0.0)
    assert "progress: [" in text
    assert "wave 1  pending" in text
    assert "    a                                pending" in text
    assert progress_bar(1, 4, 8) == "[##......] 1/4"


def test_a_follow_prints_a_line_per_change() -> None:
    before = info(["a", "b"])
    moved = msgspec.structs.replace(
        before,
        state="aborted",
        reason="1 of 1 finished targets failed",
        finished=1,
        targets=[
            msgspec.structs.replace(before.targets[0], state="failed", reason="rejected"),
            *before.targets[1:],
        ],
    )
    lines = changes(before, moved)
    assert any(
        line.endswith("rollout r-1 aborted: 1 of 1 finished targets failed") for line in lines
    )
    assert any(line.endswith("a failed: rejected") for line in lines)
    assert not any(" b " in line for line in lines)  # b did not change
