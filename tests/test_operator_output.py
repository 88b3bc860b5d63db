"""What an operator command prints of what came off the wire: control characters shown,
never obeyed, every field on its own line; JSON exact."""

from __future__ import annotations

import json
import unicodedata

import pytest

from edgeplane.controller.cli.deployments import details, table
from edgeplane.controller.cli.events import event_line
from edgeplane.controller.operator.board import Row
from edgeplane.controller.operator.board import render_table as board_table
from edgeplane.controller.operator.env_text import env_details, env_table
from edgeplane.controller.operator.event_text import check_line, describe, output_block
from edgeplane.controller.operator.output import json_safe, render_table, to_json, visible
from edgeplane.shared.messages import (
    Cancelled,
    Check,
    CommandRejected,
    Failed,
    Overridden,
    Platform,
    Preflight,
    StepFinished,
)
from edgeplane.shared.rpc import DeploymentInfo, EnvInfo, LoggedEvent

# Clear the screen, turn red, NUL, then a line of its own that reads like another
# environment's event, a carriage return that would overwrite the start of the line, and
# a right-to-left override.
HOSTILE = (
    "\x1b[2J\x1b[31mok\x00\n2026-01-01 00:00:00  edge-b  d-1  succeeded in 1.0 s\r"
    "\u202etxt.exe\x9b1m\x7f\u2028end"
)
FORGED = "2026-01-01 00:00:00  edge-b"


BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def obeyed(text: str) -> list[str]:
    """The characters of ``text`` a terminal would act on rather than show (a newline
    aside: the caller counts those)."""
    return [
        char
        for char in text
        if char != "\n" and (unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI)
    ]


def assert_safe(printed: str, lines: int) -> None:
    """No control character but the newlines between our own ``lines`` lines, and no
    forged line."""
    assert obeyed(printed) == []
    assert printed.count("\n") == lines - 1, printed
    assert not any(line.startswith(FORGED) for line in printed.splitlines())


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, a path C:\\x and ünïcødé", "plain text, a path C:\\x and ünïcødé"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x00\x07\x08\x7f", "\\x00\\x07\\x08\\x7f"),
        ("\x85\x9b", "\\x85\\x9b"),
        ("\u202eabc\u2066\u200f", "\\u202eabc\\u2066\\u200f"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ],
)
def test_visible_writes_out_every_control_character(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert visible(shown) == shown  # twice: no change


def test_visible_leaves_nothing_a_terminal_obeys_for_any_character() -> None:
    everything = "".join(chr(code) for code in range(0x3000))
    assert obeyed(visible(everything)) == []
    assert "\n" not in visible(everything)


def test_json_stays_exact_and_carries_no_raw_control_character() -> None:
    value = {"reason": HOSTILE}
    text = to_json(value)
    assert json.loads(text) == value
    assert obeyed(text.replace("\n", "")) == []
    assert json.loads(json_safe(json.dumps(value))) == value


def test_an_event_line_is_one_line_whatever_its_fields_hold() -> None:
    event = CommandRejected(env="edge-a", seq=1, dep="d-1\x1b[2J", cmd="c-1", reason=HOSTILE)
    line = event_line(0.0, event)
    assert_safe(line, 1)
    assert "rejected: \\x1b[2J\\x1b[31mok\\x00\\n2026-01-01" in line
    assert "d-1\\x1b[2J" in line


def test_descriptions_checks_and_tables_show_control_characters() -> None:
    failed = Failed(env="edge-a", seq=2, reason=HOSTILE, step="s\n1")
    assert_safe(describe(failed), 1)
    check = Check(kind="secret", name="T\x1b]0;title\x07", ok=False, detail=HOSTILE)
    assert_safe(check_line(check), 1)
    assert_safe(describe(Preflight(env="edge-a", seq=3, ok=False, checks=[check])), 1)
    assert_safe(render_table(("A", "B"), [("x\ny", HOSTILE)]), 2)


def test_a_step_output_block_keeps_its_lines_each_shown_and_indented() -> None:
    stderr = "first\x1b[31m\n" + FORGED + "  d-1  succeeded\r\nlast\x00"
    event = StepFinished(
        env="edge-a", seq=4, step="s", index=0, exit_code=1, duration=0.1, ok=False, stderr=stderr
    )
    block = output_block(event.stderr, "stderr")
    assert block == [
        "    stderr | first\\x1b[31m",
        f"    stderr | {FORGED}  d-1  succeeded",
        "    stderr | last\\x00",
    ]
    assert_safe("\n".join(block), 3)


def test_deployments_show_and_list_show_what_the_agent_wrote() -> None:
    rejected = CommandRejected(env="edge-a", seq=1, dep="d-1", cmd="c-1", reason=HOSTILE)
    check = Check(kind="model", name="m", ok=True, detail=HOSTILE)
    preflight = Preflight(env="edge-a", seq=2, dep="d-1", cmd="c-1", ok=True, checks=[check])
    info = DeploymentInfo(
        id="d-1", env="edge-a", workflow="w\x1b[2J", version="1\n2", kind="job",
        state="rejected", reason=HOSTILE, created=0.0, updated=0.0, cmd="c-1",
        events=[LoggedEvent(id=1, at=0.0, event=preflight),
                LoggedEvent(id=2, at=0.0, event=rejected)],
    )  # fmt: skip
    shown = details(info)
    # id, env, workflow, state, dry run, created, updated, command, "events:", 3 events
    assert_safe(shown, 12)
    assert_safe(table([info]), 2)


def test_env_show_and_list_show_what_the_agent_reported() -> None:
    info = EnvInfo(
        id="edge-a", project="p", stage="dev", location="lab", purpose="e2e",
        labels={"k": "v\x1b[2J"}, created=1.0, status="online", since=1.0, last_seen=1.0,
        models={"m\x1b[2J": ["1\n" + FORGED]},
        platform=Platform(os="linux\x1b[31m", arch="x\r86", py="3\n1", agent="a\x00"),
        running=["d-1\x1b[2J"],
    )  # fmt: skip
    shown = env_details(info, clock=lambda: 2.0)
    # one line per field, whatever they hold: id, project, stage, location, purpose,
    # labels, created, status, heartbeat, steady, link, pressure, models, platform, running,
    # incidents
    assert_safe(shown, 16)
    assert "models:    m\\x1b[2J 1\\n2026-01-01" in shown
    assert_safe(env_table([info], clock=lambda: 2.0), 2)


def test_the_status_table_shows_a_written_view_reason() -> None:
    row = Row("edge-a", "offline", 1.0, False, HOSTILE, None)
    assert_safe(board_table([row], now=2.0), 2)


def test_deployments_show_names_a_forced_deployment_and_its_overridden_record() -> None:
    own = Overridden(env="edge-a", seq=1, src="controller", dep="d-1", cmd="c-1",
                     check="flapping", reason="camera driver hotfix")  # fmt: skip
    info = DeploymentInfo(
        id="d-1", env="edge-a", workflow="w", version="1", state="sent", created=0.0,
        updated=0.0, cmd="c-1", forced="flapping: camera driver hotfix",
        events=[LoggedEvent(id=1, at=0.0, event=own)],
    )  # fmt: skip
    lines = details(info).splitlines()
    assert "forced:   flapping: camera driver hotfix" in lines
    assert lines[-1].endswith(
        "sent past the flapping refusal at the operator's word: camera driver hotfix"
    )
    cancelled = Cancelled(env="edge-a", seq=2, dep="d-1", cmd="c-2", reason="cancelled, say")
    assert describe(cancelled) == "cancelled: cancelled, say"
