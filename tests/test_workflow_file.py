"""Workflow files: what loads, and the one-line error for each way a file can be wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeplane.controller.operator.workflow_file import (
    MAX_FILE_SIZE,
    load_workflow,
    read_workflow_file,
)
from edgeplane.shared.errors import EdgeplaneError, WorkflowFileError
from edgeplane.shared.workflow import Workflow

REPO = Path(__file__).resolve().parent.parent

CONTRACT_EXAMPLE = """\
name: vision-inspect
version: 1.4.0
requires:
  models: [{name: defect-detector, version: ">=2.1,<3"}]
  datasources: [{name: line-camera, url: "tcp://10.0.0.5:554"}]
  buckets: [{name: results, path: /var/lib/edgeplane/results, access: write}]
  secrets: [CAMERA_TOKEN]
steps:
  - {name: inspect, run: ["python3", "-m", "inspect_line", "--once"], timeout: 60}
"""

MINIMAL = 'name: w\nversion: "1"\nsteps:\n'


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(WorkflowFileError) as caught:
        load_workflow(path)
    assert isinstance(caught.value, EdgeplaneError)
    return str(caught.value)


def test_the_contract_example_loads_into_typed_structs(tmp_path: Path) -> None:
    workflow = load_workflow(write(tmp_path, "flow.yaml", CONTRACT_EXAMPLE))
    assert workflow.name == "vision-inspect"
    assert workflow.version == "1.4.0"
    assert workflow.kind == "job"
    assert workflow.requires.models[0].version == ">=2.1,<3"
    assert workflow.requires.buckets[0].access == "write"
    assert workflow.requires.secrets == ["CAMERA_TOKEN"]
    assert workflow.steps[0].run == ["python3", "-m", "inspect_line", "--once"]
    assert workflow.steps[0].timeout == 60.0


def test_json_and_yaml_of_the_same_workflow_are_equal(tmp_path: Path) -> None:
    yaml_file = write(tmp_path, "flow.yml", 'name: w\nversion: "2"\nsteps: [{name: s, run: [x]}]\n')
    json_file = write(
        tmp_path,
        "flow.json",
        '{"name": "w", "version": "2", "steps": [{"name": "s", "run": ["x"]}]}',
    )
    assert load_workflow(yaml_file) == load_workflow(json_file)


def test_a_file_without_a_known_suffix_is_tried_as_json_then_yaml(tmp_path: Path) -> None:
    as_json = write(
        tmp_path,
        "flow.txt",
        '{"name": "w", "version": "1", "steps": [{"name": "s", "run": ["x"]}]}',
    )
    as_yaml = write(tmp_path, "workflow", MINIMAL + "  - {name: s, run: [x]}\n")
    assert load_workflow(as_json) == load_workflow(as_yaml)
    assert "line 1, column 12: not valid JSON" in error_of(write(tmp_path, "x.txt", '{"name": 1,'))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL + "  - {name: a, run: [x]}\n  - {name: b, run: [x], timeout: soon}\n",
            'flow.yaml: steps[1].timeout: expected a number, got "soon"',
        ),
        (
            MINIMAL + "  - {name: a, run: [x], tiemout: 5}\n",
            'flow.yaml: steps[0].tiemout: unknown field (did you mean "timeout"?)',
        ),
        (
            MINIMAL.replace("steps:", "require: {}\nsteps:") + "  - {name: a, run: [x]}\n",
            'flow.yaml: require: unknown field (did you mean "requires"?)',
        ),
        (
            MINIMAL.replace("steps:", "requires: {models: [{name: m, vrsion: '1'}]}\nsteps:")
            + "  - {name: a, run: [x]}\n",
            'flow.yaml: requires.models[0].vrsion: unknown field (did you mean "version"?)',
        ),
        (
            MINIMAL + "  - {name: a}\n",
            'flow.yaml: steps[0]: missing required field "run"',
        ),
        (
            "name: w\nsteps: [{name: a, run: [x]}]\n",
            'flow.yaml: missing required field "version"',
        ),
        (
            MINIMAL + "  - {name: a, run: [x], timeout: -1}\n",
            "flow.yaml: steps[0].timeout: expected a number > 0, got -1",
        ),
        (
            MINIMAL + "  - {name: a, run: python3 main.py}\n",
            'flow.yaml: steps[0].run: expected a list, got "python3 main.py"',
        ),
        (
            "name: w\nversion: 1.4\nsteps: [{name: a, run: [x]}]\n",
            "flow.yaml: version: expected a string, got 1.4 (put it in quotes)",
        ),
        (
            MINIMAL.replace("steps:", "kind: daemon\nsteps:") + "  - {name: a, run: [x]}\n",
            'flow.yaml: kind: expected one of "job", "service", got "daemon"',
        ),
        (
            MINIMAL.replace(
                "steps:", "requires: {buckets: [{name: b, path: /x, access: rw}]}\nsteps:"
            )
            + "  - {name: a, run: [x]}\n",
            'flow.yaml: requires.buckets[0].access: expected one of "read", "write", '
            '"readwrite", got "rw"',
        ),
        (
            MINIMAL.replace("steps:", "requires: {secrets: [camera-token]}\nsteps:")
            + "  - {name: a, run: [x]}\n",
            "flow.yaml: requires.secrets[0]: expected a variable name of letters, digits and "
            "'_', not starting with a digit, got \"camera-token\"",
        ),
        (
            MINIMAL + "  - {name: a, run: [x], env: {MODE: 3}}\n",
            "flow.yaml: steps[0].env.MODE: expected a string, got 3 (put it in quotes)",
        ),
        (
            MINIMAL + '  - {name: a, run: [x], env: {"not a name": x}}\n',
            'flow.yaml: steps[0].env: key "not a name": expected a variable name',
        ),
        ("name: w\nversion: '1'\nsteps: []\n", "flow.yaml: steps: expected at least one item"),
        (
            "name: " + "n" * 70 + "\nversion: '1'\nsteps: [{name: a, run: [x]}]\n",
            "flow.yaml: name: expected at most 64 characters, got 70",
        ),
        (
            MINIMAL + "  - {name: a, run: [x]}\n  - {name: b, run: [x]}\n  - {name: a, run: [y]}\n",
            'flow.yaml: steps[2].name: duplicate step name "a" (also steps[0])',
        ),
        (
            MINIMAL.replace("steps:", "requires: {models: [{name: m, version: '2.1'}]}\nsteps:")
            + "  - {name: a, run: [x]}\n",
            'flow.yaml: requires.models[0].version: "2.1" is not a PEP 440 version specifier '
            'such as ">=2.1,<3" (for exactly this version write "==2.1")',
        ),
        (
            MINIMAL.replace("steps:", "requires: {models: [{name: m, version: '>=2,<<3'}]}\nsteps:")
            + "  - {name: a, run: [x]}\n",
            'flow.yaml: requires.models[0].version: ">=2,<<3" is not a PEP 440 version specifier',
        ),
        ("name: a\nname: b\n", 'flow.yaml: line 2, column 1: duplicate key "name"'),
        ('name: w\nversion: "1\n', "flow.yaml: line 3, column 1: found unexpected end of stream"),
        ("name: w\n  version: 1\n", "flow.yaml: line 2, column 10: mapping values are not allowed"),
        ("- a\n- b\n", "flow.yaml: expected a mapping (name, version, steps...), got a list"),
        ("", "flow.yaml: expected a mapping (name, version, steps...), got nothing"),
        ("name: !!python/object:os.system x\n", "flow.yaml: line 1, column 7: could not determine"),
        ("version: 2024-13-01\n", "flow.yaml: not valid YAML: a bad value"),
        ("!!int \n", "flow.yaml: not valid YAML: a value that does not fit its tag"),
        ("name: \x1f\n", "flow.yaml: not valid YAML: character U+001F at offset 6 is not allowed"),
    ],
)
def test_a_bad_yaml_file_names_the_field_and_what_was_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    write(tmp_path, "flow.yaml", text)
    monkeypatch.chdir(tmp_path)  # the message names the file as the user gave it
    message = error_of(Path("flow.yaml"))
    assert message.startswith(expected), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "w",}', "line 1, column 14: not valid JSON: Expecting property name"),
        ('{"name": "a", "name": "b"}', 'duplicate key "name"'),
        (
            '{"name": "w", "version": "1", "steps": [{"name": "s", "run": ["x"], "timeout": NaN}]}',
            "not valid JSON: NaN is not valid JSON",
        ),
        ("[1, 2]", "expected a mapping (name, version, steps...), got a list"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_bad_json_file_says_where(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "flow.json", text)
    message = error_of(path)
    assert message.startswith(f"{path}: {expected}"), message


def test_a_version_that_is_not_pep_440_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "flow.yaml", "name: w\nversion: build-7\nsteps: [{name: a, run: [x]}]\n")
    loaded = read_workflow_file(path)
    assert loaded.workflow.version == "build-7"
    assert loaded.warnings == (
        f'{path}: version: "build-7" is not a PEP 440 version (such as 1.4.0); it is kept as a '
        "label",
    )


def test_missing_file_directory_large_file_and_binary_are_named(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such file"
    assert error_of(tmp_path) == f"{tmp_path}: is a directory, expected a workflow file"
    big = write(tmp_path, "big.yaml", "# padding\n" * (MAX_FILE_SIZE // 10 + 1))
    assert error_of(big) == f"{big}: too large: over 256 KiB"
    binary = write(tmp_path, "bin.yaml", b"name: \xff\xfe")
    assert error_of(binary) == f"{binary}: not UTF-8 text (bad byte at offset 6)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "flow.yaml", CONTRACT_EXAMPLE)
    path.chmod(0)
    assert error_of(path) == f"{path}: cannot read it: Permission denied"


def test_yaml_aliases_and_cycles_do_not_run_away(tmp_path: Path) -> None:
    cycle = write(tmp_path, "cycle.yaml", "name: w\nversion: '1'\nsteps: &s [*s]\n")
    assert error_of(cycle).endswith("steps[0]: expected a mapping, got a list")
    shared_step = "name: w\nversion: '1'\nsteps: [&s {name: a, run: [x]}, *s]\n"
    assert "duplicate step name" in error_of(write(tmp_path, "alias.yaml", shared_step))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.one_of(
        st.binary(max_size=512),
        st.text(
            alphabet=st.sampled_from(list("{}[]:,-&*!|>'\"#\n ?%@`\t\\abnrsv0123.e+")), max_size=200
        ),
        st.text(max_size=200),
    ),
    suffix=st.sampled_from([".yaml", ".json", ".txt", ""]),
)
def test_any_bytes_load_or_fail_with_a_workflow_file_error(
    tmp_path: Path, content: str | bytes, suffix: str
) -> None:
    path = write(tmp_path, f"flow{suffix}", content)
    try:
        outcome: Workflow | str = load_workflow(path)
    except WorkflowFileError as exc:
        outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome.startswith(f"{path}: ")
        assert "\n" not in outcome


FIELD_NAMES = st.sampled_from(
    [
        "name",
        "version",
        "steps",
        "kind",
        "requires",
        "models",
        "secrets",
        "buckets",
        "run",
        "env",
        "timeout",
        "path",
        "access",
        "A_B",
        "not a name",
        "",
    ]
)
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=70)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(FIELD_NAMES, inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.dictionaries(FIELD_NAMES, VALUES, max_size=6))
def test_any_json_document_loads_or_names_what_is_wrong_in_one_line(
    tmp_path: Path, data: dict[str, object]
) -> None:
    """Workflow-shaped nonsense: every wrong field is reported through the same path
    translation, never an exception of another kind."""
    path = write(tmp_path, "flow.json", json.dumps(data, allow_nan=True))
    try:
        outcome: Workflow | str = load_workflow(path)
    except WorkflowFileError as exc:
        outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome.startswith(f"{path}: ")
        assert "\n" not in outcome
