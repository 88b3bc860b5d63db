"""Environment records: validation, derived ids, duplicates, the projects' cloud
environments, labels and retirement (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from edgeplane.controller.core.registry import Registry
from edgeplane.controller.errors import RequestRefused
from edgeplane.shared.rpc import EnvCreate

NOW = 1_700_000_000.0


def create(**fields: Any) -> EnvCreate:
    base: dict[str, Any] = {"stage": "prod", "location": "Plant 4", "purpose": "vision"}
    return EnvCreate(**{**base, **fields})


def test_without_an_id_the_record_is_named_stage_location_purpose() -> None:
    registry = Registry()
    created = registry.create(create(project="acme"), NOW)
    assert [r.id for r in created] == ["acme-cloud", "prod-plant-4-vision"]
    record = registry.get("prod-plant-4-vision")
    assert record is not None
    assert (record.project, record.stage, record.location, record.purpose) == (
        "acme", "prod", "Plant 4", "vision",
    )  # fmt: skip
    assert record.created == NOW
    assert record.retired is None


def test_the_first_record_of_a_project_creates_its_cloud_environment_once() -> None:
    registry = Registry()
    first = registry.create(create(id="edge-a", project="acme"), NOW)
    second = registry.create(create(id="edge-b", project="acme"), NOW + 1)
    assert [r.id for r in first] == ["acme-cloud", "edge-a"]
    assert [r.id for r in second] == ["edge-b"]
    cloud = registry.get("acme-cloud")
    assert cloud is not None
    assert (cloud.project, cloud.location) == ("acme", "cloud")


def test_creating_the_cloud_environment_itself_makes_no_second_one() -> None:
    registry = Registry()
    created = registry.create(create(id="acme-cloud", project="acme"), NOW)
    assert [r.id for r in created] == ["acme-cloud"]


def test_default_cloud_is_made_sure_of_once() -> None:
    registry = Registry()
    assert [r.id for r in registry.ensure_default(NOW)] == ["default-cloud"]
    assert registry.ensure_default(NOW + 5) == []
    # the default project has its cloud environment: a new record adds only itself
    assert [r.id for r in registry.create(create(id="edge-a"), NOW)] == ["edge-a"]


def test_a_duplicate_id_is_refused_naming_it_and_changes_nothing() -> None:
    registry = Registry()
    registry.create(create(id="edge-a", labels={"line": "4"}), NOW)
    with pytest.raises(RequestRefused, match="'edge-a' exists already") as caught:
        registry.create(create(id="edge-a", location="elsewhere"), NOW + 1)
    assert caught.value.code == "exists"
    record = registry.get("edge-a")
    assert record is not None
    assert record.location == "Plant 4"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"id": "Bad_Id"}, "invalid environment id 'Bad_Id'"),
        ({"location": "  "}, "location: must not be empty"),
        ({"purpose": ""}, "purpose: must not be empty"),
        ({"location": "x" * 70}, "invalid environment id"),  # the derived id is too long
    ],
)
def test_invalid_requests_are_refused_naming_what_is_wrong(
    fields: dict[str, Any], named: str
) -> None:
    registry = Registry()
    with pytest.raises(RequestRefused, match=named) as caught:
        registry.create(create(**fields), NOW)
    assert caught.value.code == "invalid"
    assert len(registry) == 0


def test_labels_are_merged_and_removed() -> None:
    registry = Registry()
    registry.create(create(id="edge-a", labels={"line": "4", "owner": "ops"}), NOW)
    record = registry.update_labels("edge-a", {"line": "5", "gpu": "yes"}, ["owner"])
    assert dict(record.labels) == {"line": "5", "gpu": "yes"}
    stored = registry.get("edge-a")
    assert stored is not None
    assert dict(stored.labels) == {"line": "5", "gpu": "yes"}


def test_retire_keeps_the_record_and_refuses_what_follows() -> None:
    registry = Registry()
    registry.create(create(id="edge-a"), NOW)
    retired = registry.retire("edge-a", NOW + 10)
    assert retired.retired == NOW + 10
    assert "edge-a" in registry
    assert not registry.is_registered("edge-a")
    with pytest.raises(RequestRefused, match="retired already"):
        registry.retire("edge-a", NOW + 11)
    with pytest.raises(RequestRefused, match="'edge-a' is retired") as caught:
        registry.update_labels("edge-a", {"a": "b"}, [])
    assert caught.value.code == "retired"
    with pytest.raises(RequestRefused, match="exists already \\(retired\\)"):
        registry.create(create(id="edge-a"), NOW + 12)


def test_an_unknown_environment_is_not_found_with_the_command_to_create_it() -> None:
    registry = Registry()
    with pytest.raises(RequestRefused, match="edgeplane env create ghost") as caught:
        registry.require("ghost")
    assert caught.value.code == "not-found"
