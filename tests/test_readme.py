"""The README (and docs/operations.md, docs/protocol.md) checked against the code where that
is cheap: the settings tables list exactly the flags each command's ``--help`` prints, with
the same defaults; every command shown in a shell block parses; every file named exists;
and example ids look like the ids the controller makes."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from edgeplane.controller.cli import main as edgeplane_cli
from edgeplane.edge_agent import cli as agent_cli

ROOT: Final = Path(__file__).resolve().parent.parent
README: Final = ROOT / "README.md"
DOCS_WITH_COMMANDS: Final = (README, ROOT / "docs" / "operations.md")
DOCS_WITH_IDS: Final = (*DOCS_WITH_COMMANDS, ROOT / "docs" / "protocol.md")
FLAG: Final = re.compile(r"--[a-z][a-z0-9-]*")
DEFAULT: Final = re.compile(r"\(default: ([^)]+)\)")
# "d-" (a deployment) or "c-" (a command) and hex digits: the controller makes ten.
ID_LIKE: Final = re.compile(r"(?<![\w-])[cd]-[0-9a-f]{2,}(?![\w-])")


# --- reading the README ---------------------------------------------------------------------
def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line), up to the next heading of any level."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end])


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: rows of cells, without header and separator rows."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(_cells(line))
            continue
        if current:
            found.append(current[2:])
            current = []
    return found


def _cells(row: str) -> list[str]:
    # "\|" inside a cell is a literal bar (`dev\|staging\|prod`), not a cell boundary.
    cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def code_literal(cell: str) -> str | None:
    """The text of a cell that is one code span (`` `600` ``), else None."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    return match.group(1) if match else None


# --- reading the parsers --------------------------------------------------------------------
def subcommand(parser: argparse.ArgumentParser, *words: str) -> argparse.ArgumentParser:
    for word in words:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = commands.choices[word]
    return parser


def long_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The long flags ``--help`` prints, but ``--help``: flag -> its action."""
    return {
        option: action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def help_default(action: argparse.Action) -> str | None:
    """The default ``--help`` states for a flag, when it states one of one word."""
    match = DEFAULT.search(action.help or "")
    if match is None or " " in match.group(1):
        return None
    return match.group(1)


def parser_of(command: str) -> argparse.ArgumentParser:
    """``edge-agent run``, ``edgeplane controller run``: that command's parser."""
    program, *words = command.split()
    if program == "edge-agent":
        return subcommand(agent_cli.build_parser(words[0]), *words)
    return subcommand(edgeplane_cli.build_parser(), *words)


# --- the settings tables ----------------------------------------------------------------------
COMMAND_TABLES: Final = (
    "edge-agent run",
    "edgeplane controller run",
    "edgeplane up",
    "edgeplane broker init",
)


def settings_table(command: str) -> dict[str, str]:
    """The first table under ``### `command` ``: flag -> its default cell."""
    rows = tables(section(README.read_text(encoding="utf-8"), f"### `{command}`"))[0]
    table: dict[str, str] = {}
    for row in rows:
        flags = FLAG.findall(row[0])
        assert len(flags) == 1, f"README, {command}: one flag per row, got {row[0]!r}"
        table[flags[0]] = row[1]
    return table


@pytest.mark.parametrize("command", COMMAND_TABLES)
def test_a_settings_table_lists_exactly_the_flags_of_its_command(command: str) -> None:
    documented = set(settings_table(command))
    actual = set(long_flags(parser_of(command)))
    assert documented - actual == set(), f"README lists flags {command} does not have"
    assert actual - documented == set(), f"README's table of {command} lacks flags"


@pytest.mark.parametrize("command", COMMAND_TABLES)
def test_a_settings_table_gives_the_defaults_that_help_prints(command: str) -> None:
    table = settings_table(command)
    for flag, action in long_flags(parser_of(command)).items():
        stated = help_default(action)
        if stated is None:
            continue
        documented = code_literal(table[flag])
        assert documented is not None, f"README, {command} {flag}: default {stated!r}"
        assert _same_value(documented, stated), (
            f"README, {command} {flag}: default {documented!r}, --help says {stated!r}"
        )


def _same_value(documented: str, stated: str) -> bool:
    try:
        return float(documented) == float(stated)
    except ValueError:
        return documented == stated


# --- the operator commands --------------------------------------------------------------------
def operator_tables() -> tuple[set[str], list[list[str]]]:
    """The flags all operator commands share, and the rows of the commands' own flags."""
    shared, own = tables(section(README.read_text(encoding="utf-8"), "### Operator commands"))
    return {FLAG.findall(row[0])[0] for row in shared}, own


def operator_commands() -> Iterator[tuple[tuple[str, ...], set[str]]]:
    """Each operator command the README's table names (``deployments [list]`` is two), with
    the flags it should have."""
    shared, rows = operator_tables()
    for row in rows:
        words = [w for w in row[0].strip("`").split()[1:] if re.fullmatch(r"\[?[a-z][a-z-]*\]?", w)]
        flags = shared | set(FLAG.findall(row[1]))
        flags -= set(re.findall(r"no `(--[a-z-]+)`", row[1]))
        required = tuple(w for w in words if not w.startswith("["))
        yield required, flags
        optional = [w.strip("[]") for w in words if w.startswith("[")]
        if optional:
            yield (*required, *optional), flags


def cli_leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command of the ``edgeplane`` command line, as the words that name it."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if words:
        yield words
    for action in actions:
        for name, child in action.choices.items():
            yield from cli_leaves(child, (*words, name))


NOT_OPERATOR_COMMANDS: Final = {
    ("up",),
    ("controller",),
    ("controller", "run"),
    ("demo",),
    ("broker",),
    ("broker", "init"),
}


def test_the_operator_table_names_every_operator_command() -> None:
    documented = {words for words, _ in operator_commands()}
    parent_only = {("env",), ("operator",), ("rollout",)}  # alone, each only lists its actions
    actual = set(cli_leaves(edgeplane_cli.build_parser())) - NOT_OPERATOR_COMMANDS - parent_only
    assert documented == actual


@pytest.mark.parametrize(
    ("words", "flags"),
    [pytest.param(words, flags, id=" ".join(words)) for words, flags in operator_commands()],
)
def test_the_operator_table_lists_exactly_the_flags_of_each_command(
    words: tuple[str, ...], flags: set[str]
) -> None:
    actual = set(long_flags(subcommand(edgeplane_cli.build_parser(), *words)))
    command = " ".join(("edgeplane", *words))
    assert flags - actual == set(), f"README lists flags {command} does not have"
    assert actual - flags == set(), f"README's operator tables lack flags of {command}"


# --- the commands shown -------------------------------------------------------------------
def shown_commands(path: Path) -> Iterator[list[str]]:
    """The ``edgeplane`` and ``edge-agent`` command lines of the shell blocks of ``path``
    (``$ ``-prefixed ones in console blocks), continuation lines joined."""
    block: str | None = None
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block not in ("sh", "console"):
            continue
        if block == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        argv = shlex.split(pending, comments=True)
        pending = ""
        if argv and Path(argv[0]).name in ("edgeplane", "edge-agent"):
            yield [Path(argv[0]).name, *argv[1:]]


def all_shown_commands() -> list[tuple[str, list[str]]]:
    return [(path.name, argv) for path in DOCS_WITH_COMMANDS for argv in shown_commands(path)]


def test_the_docs_show_commands() -> None:
    shown = {argv[0] for _, argv in all_shown_commands()}
    assert shown == {"edgeplane", "edge-agent"}


@pytest.mark.parametrize(
    ("doc", "argv"), all_shown_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else x
)
def test_every_command_shown_parses(
    doc: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    program, *args = argv
    if program == "edge-agent":
        parser = agent_cli.build_parser(args[0] if args else None)
    else:
        parser = edgeplane_cli.build_parser()
    try:
        parsed = parser.parse_args(args)
        if program == "edgeplane":
            edgeplane_cli.take_flags_before_command(parser, parsed)
    except SystemExit as exc:
        pytest.fail(f"{doc}: {shlex.join(argv)}: exit {exc.code}: {capsys.readouterr().err}")


# --- files and ids ----------------------------------------------------------------------------
REPO_PATH: Final = re.compile(
    r"(?<![\w/.$-])(?:\.ci|bench|controller|docs|edge_agent|examples|mosquitto|scripts|shared|tests)"
    r"/[\w./-]*"
)


def test_every_examples_path_the_readme_names_exists() -> None:
    paths = set(REPO_PATH.findall(README.read_text(encoding="utf-8")))
    assert {"examples/line-inspect.yaml", "examples/models"} <= paths
    assert sorted(p for p in paths if p.startswith("examples/") and not (ROOT / p).exists()) == []


@pytest.mark.parametrize("path", DOCS_WITH_IDS, ids=lambda p: p.name)
def test_every_file_the_docs_name_exists(path: Path) -> None:
    """Paths from the repository's root (``controller/daemon/service.py``,
    ``examples/models/``) name files and folders that are there."""
    paths = set(REPO_PATH.findall(path.read_text(encoding="utf-8")))
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


@pytest.mark.parametrize("path", DOCS_WITH_IDS, ids=lambda p: p.name)
def test_example_ids_look_like_real_ones(path: Path) -> None:
    ids = ID_LIKE.findall(path.read_text(encoding="utf-8"))
    assert [i for i in ids if not re.fullmatch(r"[cd]-[0-9a-f]{10}", i)] == []
