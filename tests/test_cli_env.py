"""``edgeplane env ...`` as an operator runs it: real controller and agent processes, the CLI
as a subprocess, a real broker. What is asserted is what the user sees: stdout, one line on
stderr for a failure, and the exit status."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.broker.process import free_port
from edgeplane.controller.operator.board import Board, render_json, render_table
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.system import CliResult, open_system, retained_now


def one_error_line(result: CliResult) -> str:
    """A failure's stderr: exactly one line, which is returned."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, str(result)
    return lines[0]


def table(result: CliResult) -> list[list[str]]:
    """The rows of a text table, split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in result.stdout.strip().splitlines()]


@pytest.mark.slow
async def test_create_list_show_update_and_retire_records(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        create = "env create edge-a --stage prod --location berlin --purpose vision"
        created = await system.cli(*create.split(), "--label", "site=b1", "--label", "tier=gold")
        assert (created.code, created.stdout, created.stderr) == (0, "edge-a\n", ""), str(created)
        named = await system.cli(
            "env", "create", "--stage", "dev", "--location", "Lab 2", "--purpose", "qa"
        )
        assert (named.code, named.stdout) == (0, "dev-lab-2-qa\n"), str(named)

        again = await system.cli(
            "env", "create", "edge-a", "--stage", "dev", "--location", "x", "--purpose", "y"
        )
        assert again.code == 1, str(again)
        assert "edge-a" in one_error_line(again)
        assert "exists" in one_error_line(again)
        assert again.stdout == ""

        listed = table(await system.cli("env", "list"))
        header = ["ID", "PROJECT", "STAGE", "LOCATION", "PURPOSE", "STATUS", "LAST SEEN", "LABELS"]
        assert listed[0] == header
        rows = {row[0]: row for row in listed[1:]}
        assert sorted(rows) == ["default-cloud", "dev-lab-2-qa", "edge-a"]
        assert rows["edge-a"] == [
            "edge-a", "default", "prod", "berlin", "vision", "unknown", "never",
            "site=b1,tier=gold",
        ]  # fmt: skip

        shown = await system.cli_json("env", "show", "edge-a")
        assert (shown["id"], shown["stage"], shown["status"]) == ("edge-a", "prod", "unknown")
        assert shown["labels"] == {"site": "b1", "tier": "gold"}
        text = await system.cli("env", "show", "edge-a")
        assert text.code == 0, str(text)
        assert "location:  berlin" in text.stdout
        assert "models:    none reported" in text.stdout
        assert "platform:  not reported" in text.stdout

        updated = await system.cli(
            "env", "update", "edge-a", "--label", "site=b2", "--remove-label", "tier"
        )
        assert updated.code == 0, str(updated)
        assert updated.stdout == "updated edge-a: labels site=b2\n"
        assert (await system.cli_json("env", "show", "edge-a"))["labels"] == {"site": "b2"}

        retired = await system.cli("env", "retire", "edge-a")
        assert retired.code == 0, str(retired)
        assert retired.stdout.startswith("retired edge-a: deployments to it are refused")
        assert "unknown" in retired.stdout  # the agent never connected: it is told later
        ids = [env["id"] for env in await system.cli_json("env", "list")]
        assert "edge-a" not in ids
        every = {env["id"]: env for env in await system.cli_json("env", "list", "--all")}
        assert every["edge-a"]["status"] == "retired"
        assert every["edge-a"]["retired"] is not None


@pytest.mark.slow
async def test_an_unknown_environment_is_named_and_exits_1(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        for args in (["show", "nope"], ["retire", "nope"], ["restart", "nope"]):
            result = await system.cli("env", *args)
            assert result.code == 1, str(result)
            assert "nope" in one_error_line(result)
            assert result.stdout == ""


@pytest.mark.slow
async def test_update_restart_and_retire_of_an_online_agent_print_its_ack(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-b", models={"detector": ["2.2.0"]})
        shown = await system.cli("env", "show", "edge-b")
        assert "status:    online since" in shown.stdout, str(shown)
        assert "models:    detector 2.2.0" in shown.stdout
        assert re.search(r"platform:  \w+ \w+, Python 3\.", shown.stdout), str(shown)

        mark = system.probe.mark()
        updated = await system.cli("env", "update", "edge-b", "--heartbeat-interval", "2")
        assert updated.code == 0, str(updated)
        assert updated.stdout.splitlines()[-1].startswith("edge-b: update done"), str(updated)
        await system.probe.wait_json(root.status("edge-b"), after=mark, interval=2.0)

        restarted = await system.cli("env", "restart", "edge-b", "--json")
        assert restarted.code == 0, str(restarted)
        answer = restarted.json()
        assert answer["cmd"].startswith("c-")
        assert (answer["ack"]["type"], answer["ack"]["op"], answer["ack"]["ok"]) == (
            "ack",
            "restart",
            True,
        )
        assert answer["ack"]["cmd"] == answer["cmd"]

        retired = await system.cli("env", "retire", "edge-b")
        assert retired.code == 0, str(retired)
        assert "the agent was told to stop" in retired.stdout
        assert retired.stdout.splitlines()[-1] == "edge-b: retire done", str(retired)
        assert await agent.proc.wait(20) is not None


@pytest.mark.slow
async def test_a_restart_the_agent_refuses_exits_1_with_its_reason(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-c")
        result = await system.cli("env", "restart", "edge-c", "--workflow", "not-deployed")
        assert result.code == 1, str(result)
        assert result.stdout.startswith("restart c-")
        line = one_error_line(result)
        assert line.startswith("edgeplane: edge-c: "), line
        assert "not-deployed" in line


@pytest.mark.slow
async def test_commands_to_an_offline_environment_are_refused_without_waiting(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-off")
        for args in (["update", "edge-off", "--set", "log_level=debug"], ["restart", "edge-off"]):
            result = await system.cli("env", *args)
            assert result.code == 1, str(result)
            assert "never been online" in one_error_line(result)


async def test_no_controller_is_one_line_and_exit_1(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        for args in (["env", "list"], ["env", "show", "edge-a"], ["deployments"], ["events"]):
            result = await system.cli(*args, "--timeout", "1")
            assert result.code == 1, str(result)
            assert result.stdout == ""
            assert one_error_line(result) == (
                f"edgeplane: no controller answered on {broker.url} within 1 s"
            )


async def test_an_unreachable_broker_is_one_line_and_exit_1() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    argv = [
        sys.executable,
        "-m",
        "edgeplane.controller",
        "env",
        "list",
        "--broker",
        url,
        "--timeout",
        "2",
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    result = CliResult(argv, process.returncode or 0, out.decode(), err.decode())
    assert result.code == 1, str(result)
    assert one_error_line(result).startswith(f"edgeplane: cannot reach the broker at {url}: ")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["env", "show", "Not_An_Id"], "invalid environment id 'Not_An_Id'"),
        (["env", "create", "--stage", "qa", "--location", "x", "--purpose", "y"], "--stage"),
        (["env", "create", "--stage", "dev", "--location", "x"], "--purpose"),
        (
            [
                "env",
                "create",
                "e1",
                "--stage",
                "dev",
                "--location",
                "x",
                "--purpose",
                "y",
                "--label",
                "nov",
            ],
            "KEY=VALUE",
        ),
        (
            [
                "env",
                "create",
                "e1",
                "--stage",
                "dev",
                "--location",
                "x",
                "--purpose",
                "y",
                "--label",
                "bad key=v",
            ],
            "invalid label name 'bad key'",
        ),
        (
            [
                "env",
                "create",
                "e1",
                "--stage",
                "dev",
                "--location",
                "x",
                "--purpose",
                "y",
                "--project",
                "Foo",
            ],
            "invalid project 'Foo'",
        ),
        (["env", "update", "edge-a", "--remove-label", "a b"], "invalid label name 'a b'"),
        (["env", "update", "edge-a"], "nothing to change"),
        (["env", "update", "edge-a", "--heartbeat-interval", "-1"], "positive number"),
        (["env"], "ACTION"),
        (["deployments", "show"], "'show ID'"),
        (["env", "list", "--timeout", "soon"], "--timeout"),
    ],
)
async def test_usage_errors_are_one_line_and_exit_2(
    broker: MosquittoProcess,
    root: TopicRoot,
    tmp_path: Path,
    procs: list[Proc],
    args: list[str],
    named: str,
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        mark = system.probe.mark()
        result = await system.cli(*args)
        await system.barrier()
        assert result.code == 2, str(result)
        assert named in one_error_line(result)
        requests = [m for m in system.probe.messages[mark:] if m.topic == root.requests()]
        assert requests == []


@pytest.mark.slow
async def test_an_agent_without_a_record_is_shown_unregistered(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.start_agent("stray-gw", wait="status")
        await system.probe.wait_json(root.view("stray-gw"), registered=False, timeout=20)

        status = await system.cli("status")
        [line] = [row for row in table(status) if row[0] == "stray-gw"]
        assert line[1] == "online (unregistered)", str(status)
        rows = {row["env"]: row for row in await system.cli_json("status")}
        assert (rows["stray-gw"]["status"], rows["stray-gw"]["registered"]) == ("online", False)
        assert rows["default-cloud"]["registered"] is True

        listed = table(await system.cli("env", "list"))
        [stray] = [row for row in listed if row[0] == "stray-gw"]
        assert stray[5] == "online, unregistered", listed
        shown = await system.cli("env", "show", "stray-gw")
        assert "online, unregistered since" in shown.stdout, str(shown)
        info = json.loads((await system.cli("env", "show", "stray-gw", "--json")).stdout)
        assert info["registered"] is False


@pytest.mark.slow
async def test_a_ghost_id_is_forgotten_and_a_controller_restart_does_not_bring_it_back(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    ghost = "dev-lab-visoin"  # an agent started with a mistyped id
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        agent = await system.start_agent(ghost)
        connected = await system.cli("env", "forget", ghost)
        assert connected.code == 1, str(connected)
        assert "stop that agent" in one_error_line(connected)
        registered = await system.cli("env", "forget", "default-cloud")
        assert registered.code == 1, str(registered)
        assert "retire it instead" in one_error_line(registered)

        after = system.probe.mark()
        assert await agent.proc.terminate() == 0
        await system.probe.wait_json(root.view(ghost), after=after, status="offline", timeout=20)
        [row] = [row for row in table(await system.cli("status")) if row[0] == ghost]
        assert row[1] == "offline (unregistered)"
        retire = await system.cli("env", "retire", ghost, "--yes")
        assert retire.code == 1, str(retire)
        assert f"edgeplane env forget {ghost}" in one_error_line(retire)
        known = await system.cli("events", "--env", ghost)  # seen: a known id, until forgotten
        assert known.code == 0, str(known)

        forgot = await system.cli("env", "forget", ghost)
        assert forgot.code == 0, str(forgot)
        assert forgot.stdout.startswith(f"forgot {ghost}: its view and retained status are ")
        assert ghost not in [row[0] for row in table(await system.cli("status"))]
        assert await retained_now(broker, root.view(ghost), root.status(ghost)) == {}

        assert system.controller is not None
        assert await system.controller.terminate() == 0
        await system.start_controller()
        assert ghost not in [info["id"] for info in await system.cli_json("env", "list")]
        assert ghost not in [row["env"] for row in await system.cli_json("status")]
        assert await retained_now(broker, root.view(ghost), root.status(ghost)) == {}
        for args in (["env", "show", ghost], ["events", "--env", ghost]):
            gone = await system.cli(*args)
            assert gone.code == 1, str(gone)
            assert f"no environment {ghost!r}" in one_error_line(gone)


@pytest.mark.slow
async def test_an_unknown_environment_is_one_line_and_exit_1_for_show_deployments_and_events(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        for args in (
            ["env", "show", "nope"],
            ["deployments", "--env", "nope"],
            ["deployments", "list", "--env", "nope", "--json"],
            ["events", "--env", "nope"],
            ["events", "--env", "nope", "--follow"],
        ):
            result = await system.cli(*args)
            assert result.code == 1, str(result)
            assert one_error_line(result).startswith("edgeplane: no environment 'nope'")
            assert result.stdout == ""
        near = await system.cli("deployments", "--env", "default-clod")
        assert "(did you mean 'default-cloud'?)" in one_error_line(near)
        known = await system.cli("deployments", "--env", "default-cloud")
        assert (known.code, known.stdout) == (0, "no deployments\n"), str(known)


@pytest.mark.slow
async def test_retire_at_a_terminal_asks_first_and_no_keeps_the_environment(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-keep")
        leader, follower = pty.openpty()  # stdin a terminal, as for a person
        argv = [sys.executable, "-m", "edgeplane.controller", "env", "retire", "edge-keep"]
        argv += ["--broker", broker.url, "--topic-root", str(root)]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=follower, stdout=PIPE, stderr=PIPE
        )
        os.close(follower)
        try:
            os.write(leader, b"n\n")
            out, err = await asyncio.wait_for(process.communicate(), 30)
        finally:
            os.close(leader)
        assert process.returncode == 1
        assert "retire edge-keep? " in out.decode()
        assert err.decode() == "edgeplane: not retired\n"
        shown = await system.cli_json("env", "show", "edge-keep")
        assert shown["retired"] is None


def test_the_status_board_marks_unregistered_agents_in_table_and_json() -> None:
    board_root = TopicRoot("edgeplane/v1")
    board = Board(board_root, clock=lambda: 100.0)
    assert board.take(board_root.controller_status(), b'{"status":"online"}', True, None)
    stray = b'{"env":"stray","status":"online","since":90.0,"registered":false}'
    known = b'{"env":"known","status":"offline","since":80.0}'
    assert board.take(board_root.view("stray"), stray, True, None)
    assert board.take(board_root.view("known"), known, True, None)
    rows = board.rows()
    lines = render_table(rows, now=100.0).splitlines()
    assert [re.split(r"\s{2,}", line)[:2] for line in lines[1:]] == [
        ["known", "offline"],
        ["stray", "online (unregistered)"],
    ]
    assert [(row["env"], row["registered"]) for row in json.loads(render_json(rows))] == [
        ("known", True),
        ("stray", False),
    ]
