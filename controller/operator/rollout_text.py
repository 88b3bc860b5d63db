"""Rollouts as text: the plan before it starts, a rollout's waves and targets with a
progress bar (``rollout status``), its list, and the lines of ``--follow`` when the output
is not a terminal (one per change)."""

from __future__ import annotations

import time
from typing import Final

from edgeplane.controller.operator.output import ago, render_table, visible
from edgeplane.shared.rpc import RolloutInfo, TargetInfo

__all__ = ["changes", "plan_text", "progress_bar", "rollout_table", "status_text"]

BAR_WIDTH: Final = 30
_FINISHED: Final = frozenset({"succeeded", "failed", "timed-out", "not-deployed", "rolled-back"})


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########.........]  9/20``."""
    filled = 0 if total == 0 else round(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _selector(info: RolloutInfo) -> str:
    return ",".join(f"{k}={v}" for k, v in info.selector.items())


def _by_wave(info: RolloutInfo) -> dict[int, list[TargetInfo]]:
    waves: dict[int, list[TargetInfo]] = {w.index: [] for w in info.waves}
    for target in info.targets:
        waves.setdefault(target.wave, []).append(target)
    return waves


def _subject(info: RolloutInfo) -> str:
    if info.action == "undeploy":
        return f"undeploy {info.workflow}"
    return f"{info.workflow} {info.version}"


def plan_text(info: RolloutInfo) -> str:
    """The plan: which environments each wave takes, in the order they go."""
    head = "dry run of a rollout" if info.dry_run else f"rollout {info.id}"
    lines = [
        f"{head}: {_subject(info)} to {info.total} environment(s) matching {_selector(info)}",
        f"  waves {','.join(info.waves_spec)}; max failures {info.max_failures} (after "
        f"{info.min_executed} finished); bake {info.bake:g}s; target timeout "
        f"{info.target_timeout:g}s; concurrency {info.concurrency}"
        + ("; rollback on abort" if info.rollback_on_abort else "")
        + ("; approve each wave" if info.approve_each_wave else "")
        + ("; offline targets not counted" if info.skip_offline else ""),
    ]
    targets = _by_wave(info)
    for wave in info.waves:
        shown = targets.get(wave.index, [])
        envs = ", ".join(t.env for t in shown)
        more = f" and {wave.size - len(shown)} more" if wave.size > len(shown) else ""
        lines.append(f"  wave {wave.index + 1} ({wave.size}): {envs}{more}")
    return "\n".join(lines)


_ORDER: Final = {"failed": 0, "timed-out": 1, "not-deployed": 2, "sent": 3, "rolled-back": 4}


def status_text(info: RolloutInfo, *, now: float | None = None, per_wave: int | None = None) -> str:
    """A rollout's state, each wave with a progress bar, and each target's state; with
    ``per_wave``, at most that many targets of each wave (failures and those in flight
    first), so that a live view fits a terminal."""
    now = time.time() if now is None else now
    state = info.state + (f": {visible(info.reason)}" if info.reason else "")
    lines = [
        f"rollout {info.id}  {_subject(info)}  {_selector(info)}",
        f"state: {state}",
        f"progress: {progress_bar(info.finished, info.total)}  failures {info.failures} "
        f"(max {info.max_failures})",
    ]
    targets = _by_wave(info)
    for wave in info.waves:
        mine = targets.get(wave.index, [])
        done = sum(1 for t in mine if t.state in _FINISHED)
        extra = ""
        if wave.state == "baking" and wave.bake_until is not None:
            extra = f" (bake ends in {max(0.0, wave.bake_until - now):.0f}s)"
        lines.append(
            f"wave {wave.index + 1}  {wave.state:<17} {progress_bar(done, len(mine), 20)}{extra}"
        )
        shown = mine
        if per_wave is not None and len(mine) > per_wave:
            shown = sorted(mine, key=lambda t: (_ORDER.get(t.state, 9), t.env))[:per_wave]
        for target in shown:
            detail = f"  {visible(target.reason)}" if target.reason else ""
            dep = f" {target.dep}" if target.dep else ""
            lines.append(f"    {target.env:<32} {target.state:<12}{dep}{detail}".rstrip())
        if wave.size > len(shown):
            lines.append(f"    ... and {wave.size - len(shown)} more")
    return "\n".join(lines)


def rollout_table(infos: list[RolloutInfo]) -> str:
    if not infos:
        return "no rollouts"
    now = time.time()
    header = ("ID", "WORKFLOW", "VERSION", "STATE", "WAVE", "DONE", "FAILURES", "UPDATED")
    rows = [
        (
            info.id,
            info.workflow,
            info.version or ("(undeploy)" if info.action == "undeploy" else ""),
            info.state,
            f"{info.wave + 1}/{len(info.waves)}",
            f"{info.finished}/{info.total}",
            str(info.failures),
            ago(now - info.updated),
        )
        for info in infos
    ]
    return render_table(header, rows)


def changes(before: RolloutInfo | None, after: RolloutInfo) -> list[str]:
    """One line per change between two looks at a rollout (``--follow`` into a pipe)."""
    lines: list[str] = []
    stamp = time.strftime("%H:%M:%S")
    if before is None or (before.state, before.reason) != (after.state, after.reason):
        reason = f": {visible(after.reason)}" if after.reason else ""
        lines.append(f"{stamp} rollout {after.id} {after.state}{reason}")
    old_waves = {} if before is None else {w.index: w.state for w in before.waves}
    for wave in after.waves:
        first = before is None and wave.state == "pending"
        if old_waves.get(wave.index) != wave.state and not first:
            lines.append(f"{stamp} wave {wave.index + 1} {wave.state}")
    old = {} if before is None else {t.env: (t.state, t.rollback_state) for t in before.targets}
    for target in after.targets:
        if old.get(target.env) != (target.state, target.rollback_state) and (
            before is not None or target.state != "pending"
        ):
            detail = f": {visible(target.reason)}" if target.reason else ""
            lines.append(f"{stamp} {target.env} {target.state}{detail}")
    if lines and (before is None or before.finished != after.finished):
        lines.append(f"{stamp} progress {progress_bar(after.finished, after.total)}")
    return lines
