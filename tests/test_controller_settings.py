"""The controller's settings: flag > EDGEPLANE_* > TOML file > default, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplane.controller.daemon.settings import ControllerSettings, default_db_path, load_settings
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.resources import DEFAULT_THRESHOLDS
from edgeplane.shared.topics import TopicRoot


def test_defaults_suit_a_real_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib/somewhere")
    settings = load_settings({}, environ={})
    assert settings == ControllerSettings()
    assert (settings.flap_window, settings.flap_high, settings.flap_low) == (600.0, 6, 2)
    assert settings.max_payload == 64 * 1024
    assert settings.db_path == Path("/var/lib/somewhere/edgeplane/controller.db")
    assert default_db_path() == settings.db_path


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "controller.toml"
    config.write_text(
        'broker = "mqtt://file:1883"\nflap_high = 9\nflap-low = 3\ntopic_root = "file/v1"\n'
        'db = "/from/file.db"\n'
    )
    environ = {"EDGEPLANE_FLAP_HIGH": "8", "EDGEPLANE_BROKER": "mqtt://env:1883"}
    flags = {"config": str(config), "flap_high": "7"}
    settings = load_settings(flags, environ=environ)
    assert settings.flap_high == 7
    assert settings.broker == BrokerUrl("mqtt", "env", 1883)
    assert settings.flap_low == 3
    assert settings.topic_root == TopicRoot("file/v1")
    assert settings.db_path == Path("/from/file.db")


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("flap_window = 30\n")
    settings = load_settings({}, environ={"EDGEPLANE_CONFIG": str(config)})
    assert settings.flap_window == 30.0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"flap_window": "-5"}, "--flap-window"),
        ({"flap_high": "many"}, "--flap-high"),
        ({"flap_low": "-1"}, "--flap-low"),
        ({"flap_low": "6"}, "--flap-low"),
        ({"max_payload": "0"}, "--max-payload"),
        ({"broker": "tcp://x:1"}, "--broker"),
        ({"topic_root": "a/+/b"}, "--topic-root"),
        ({"log_format": "xml"}, "--log-format"),
        ({"log_level": "loud"}, "--log-level"),
        ({"cpu_threshold": "0"}, "--cpu-threshold"),
        ({"memory_threshold": "100.1"}, "--memory-threshold"),
        ({"disk_threshold": "full"}, "--disk-threshold"),
    ],
)
def test_bad_values_name_the_setting(flags: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named) as caught:
        load_settings(flags, environ={})
    assert "\n" not in str(caught.value)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="EDGEPLANE_FLAP_WINDOW"):
        load_settings({}, environ={"EDGEPLANE_FLAP_WINDOW": "soon"})


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("flap_windw = 30\n")
    with pytest.raises(SettingsError, match="flap_windw"):
        load_settings({"config": str(config)}, environ={})


def test_flap_low_zero_is_allowed() -> None:
    assert load_settings({"flap_low": "0"}, environ={}).flap_low == 0


def test_pressure_thresholds_default_to_the_shared_ones_and_come_from_anywhere(
    tmp_path: Path,
) -> None:
    assert load_settings({}, environ={}).thresholds == DEFAULT_THRESHOLDS
    config = tmp_path / "c.toml"
    config.write_text("disk_threshold = 80\n")
    environ = {"EDGEPLANE_MEMORY_THRESHOLD": "75.5", "EDGEPLANE_CONFIG": str(config)}
    settings = load_settings({"cpu_threshold": "100"}, environ=environ)
    assert settings.thresholds == {"cpu": 100.0, "mem": 75.5, "disk": 80.0}
    with pytest.raises(SettingsError, match="EDGEPLANE_DISK_THRESHOLD"):
        load_settings({}, environ={"EDGEPLANE_DISK_THRESHOLD": "-3"})
