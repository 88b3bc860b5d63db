"""The operator commands' settings: flag > EDGEPLANE_* > --config TOML file > default, typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplane.controller.operator.settings import (
    OperatorSettings,
    ViewSettings,
    WatchSettings,
    load_operator_settings,
    load_view_settings,
    load_watch_settings,
)
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.topics import TopicRoot


def test_defaults() -> None:
    assert load_operator_settings({}, environ={}) == OperatorSettings()
    assert OperatorSettings().timeout == 5.0
    assert load_view_settings({}, environ={}) == ViewSettings()
    assert ViewSettings().timeout == 15.0
    assert load_watch_settings({}, environ={}) == WatchSettings()
    assert OperatorSettings().broker == BrokerUrl("mqtt", "127.0.0.1", 1883)
    assert OperatorSettings().topic_root == TopicRoot("edgeplane/v1")


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "operator.toml"
    config.write_text('broker = "mqtt://file:1883"\ntimeout = 9\ntopic-root = "file/v1"\n')
    environ = {"EDGEPLANE_TIMEOUT": "8", "EDGEPLANE_BROKER": "mqtt://env:1883"}
    settings = load_operator_settings({"config": str(config), "timeout": "7"}, environ=environ)
    assert settings == OperatorSettings(
        broker=BrokerUrl("mqtt", "env", 1883), topic_root=TopicRoot("file/v1"), timeout=7.0
    )


def test_the_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "view.toml"
    config.write_text("timeout = 30\n")
    assert load_view_settings({}, environ={"EDGEPLANE_CONFIG": str(config)}).timeout == 30.0


@pytest.mark.parametrize(
    ("flags", "environ", "named"),
    [
        ({"timeout": "soon"}, {}, "--timeout"),
        ({"broker": "tcp://x:1"}, {}, "--broker"),
        ({}, {"EDGEPLANE_TOPIC_ROOT": "a/+"}, "EDGEPLANE_TOPIC_ROOT"),
        ({"config": "/nonexistent/operator.toml"}, {}, "no such file"),
    ],
)
def test_bad_values_name_where_they_came_from(
    flags: dict[str, str], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named) as caught:
        load_operator_settings(flags, environ=environ)
    assert "\n" not in str(caught.value)


def test_a_setting_the_command_does_not_have_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "watch.toml"
    config.write_text("timeout = 3\n")  # watch waits until Ctrl-C: it has no timeout
    with pytest.raises(SettingsError, match="unknown setting 'timeout'"):
        load_watch_settings({"config": str(config)}, environ={})
