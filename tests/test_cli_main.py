"""``edgeplane`` as a command line, in-process: every command wired, ``--help`` for each,
the common flags before the command, and an installation without the ``[controller]`` extra
(``pip install edgeplane``) that says what to install instead of a traceback."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeplane.controller.broker.process import free_port
from edgeplane.controller.cli.main import build_parser, main, take_flags_before_command

COMMANDS = ("up", "controller", "status", "watch", "env", "deploy", "deployments", "events", "demo")
HELPS = [
    [*words, "--help"]
    for words in (
        [],
        *([command] for command in COMMANDS),
        ["controller", "run"],
        *(["env", action] for action in ("create", "list", "show", "update", "restart", "retire")),
        ["deployments", "list"],
        ["deployments", "show"],
    )
]
# What the [controller] extra installs beyond the base (paho-mqtt, msgspec, psutil, packaging).
EXTRA_MODULES = ("aiomqtt", "aiosqlite", "iotcore", "structlog", "yaml")
HEAVY_MODULES = (
    "edgeplane.controller.daemon.service",
    "edgeplane.controller.daemon.store",
    "edgeplane.controller.demo.story",
    "edgeplane.controller.mqtt",
    "edgeplane.controller.operator.client",
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def unreachable() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"


def test_every_command_is_wired() -> None:
    from edgeplane.controller.cli.main import build_parser

    usage = build_parser().format_help()
    for command in COMMANDS:
        assert f"    {command} " in usage


@pytest.mark.parametrize("argv", HELPS, ids=lambda argv: " ".join(argv))
def test_help_of_every_command_is_its_own(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.startswith(f"usage: {' '.join(['edgeplane', *argv[:-1]])} ")


def test_deployments_show_help_is_about_show(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "deployments", "show", "--help")
    assert "[list | show]" not in out  # the parent's
    assert "the deployment id" in out


# --- common flags before the command --------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["--broker", "@URL", "--timeout", "1", "status"],
        ["--broker", "@URL", "--timeout", "1", "env", "list"],
        ["--broker", "@URL", "deployments", "--timeout", "1"],
        ["--broker", "@URL", "--timeout", "1", "deployments", "show", "d-1"],
        ["--broker", "mqtt://127.0.0.1:1", "events", "--broker", "@URL", "--timeout", "1"],
    ],
)
def test_common_flags_before_the_command_are_the_commands(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    url = unreachable()
    code, out, err = run(capsys, *(url if word == "@URL" else word for word in argv))
    assert (code, out) == (1, "")
    assert err.startswith(f"edgeplane: cannot reach the broker at {url}: ")
    assert err.count("\n") == 1


def test_a_topic_root_before_the_command_is_checked_by_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "--topic-root", "a/#", "status")
    assert code == 2
    assert err.startswith("edgeplane: --topic-root: invalid topic root 'a/#'")


# Each command would fail at once, harmlessly, if it ran: a refusal that is missing must not
# start a demo or an `up` on the default state directory and port.
@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--timeout", "3", "watch", "--topic-root", "a/#"],
            "--timeout does not apply to edgeplane watch",
        ),
        (["--broker", "mqtt://x:1", "demo"], "--broker does not apply to edgeplane demo"),
        (
            ["--timeout", "3", "up", "--state-dir", "@TMP", "--topic-root", "a/#"],
            "--timeout does not apply to edgeplane up",
        ),
        (
            ["--timeout", "3", "controller", "run", "--flap-low", "9"],
            "--timeout does not apply to edgeplane controller run",
        ),
        (["--timeout", "3", "env", "list", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_a_common_flag_a_command_does_not_take_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
    unstartable_demo: None,
    tmp_path: Path,
    argv: list[str],
    line: str,
) -> None:
    code, out, err = run(capsys, *(str(tmp_path) if word == "@TMP" else word for word in argv))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert line in err


@pytest.fixture
def unstartable_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A demo that fails before it starts anything: its temporary directory cannot be made."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))


# --- an installation without the [controller] extra --------------------------------------
@pytest.fixture
def base_install() -> Iterator[None]:
    """As after ``pip install edgeplane``: the extra's modules cannot be imported, and
    edgeplane's modules are imported afresh (none already holds one of them)."""
    fresh = ("edgeplane", *EXTRA_MODULES)
    saved = dict(sys.modules)
    for name in saved:
        if name.partition(".")[0] in fresh:
            del sys.modules[name]
    for name in EXTRA_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError
    try:
        yield
    finally:
        for name in list(sys.modules):
            if name.partition(".")[0] in fresh:
                del sys.modules[name]
        sys.modules.update(saved)


def test_help_needs_no_extra_and_loads_nothing_heavy(
    base_install: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgeplane.controller.cli.main import main as fresh_main

    for argv in HELPS:
        with pytest.raises(SystemExit) as exited:
            fresh_main(argv)
        assert exited.value.code == 0, argv
    assert [name for name in HEAVY_MODULES if name in sys.modules] == []
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["controller", "run", "--broker", "@URL", "--db", "@DB"], "controller run"),
        (["status", "--broker", "@URL"], "status"),
        (["env", "list", "--broker", "@URL"], "env list"),
        (["demo"], "demo"),
    ],
)
def test_a_command_needing_the_extra_says_which_to_install(
    base_install: None,
    unstartable_demo: None,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    command: str,
) -> None:
    from edgeplane.controller.cli.main import main as fresh_main

    values = {"@URL": unreachable(), "@DB": str(tmp_path / "controller.db")}
    code = fresh_main([values.get(word, word) for word in argv])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"edgeplane: {command} needs the controller extra")
    assert err.endswith(": pip install 'edgeplane[controller]'\n")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["undeploy", "cam", "--env", "a-b-c", "--env", "d-e-f"], "--env"),
        (["deployments", "--env", "a-b-c", "--env", "d-e-f"], "--env"),
        (["events", "--dep", "d-1", "--dep", "d-2"], "--dep"),
    ],
)
def test_a_one_value_flag_given_twice_is_a_usage_error_not_the_last_one(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert f"argument {flag}: given twice" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [["--json", "deployments"], ["--json", "env", "show", "a-b-c"], ["--json", "status"]],
)
def test_json_before_the_command_is_the_commands(argv: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    take_flags_before_command(parser, args)
    assert args.json is True


def test_json_before_a_command_without_it_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--json", "demo")
    assert (code, out) == (2, "")
    assert "--json does not apply to edgeplane demo" in err


@pytest.mark.parametrize(
    "argv", [("events", "--timeline"), ("events", "--timeline", "--dep", "d-1")]
)
def test_a_timeline_without_one_environment_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "--timeline needs --env" in err
