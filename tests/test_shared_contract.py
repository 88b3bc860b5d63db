"""Unit tests of shared/: topics, ids, broker URLs, layered settings, backoff, redaction."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from edgeplane.shared.backoff import Backoff
from edgeplane.shared.broker_url import DEFAULT_BROKER, BrokerUrl
from edgeplane.shared.errors import (
    EdgeplaneError,
    InvalidBrokerUrl,
    InvalidId,
    InvalidTopic,
    SettingsError,
)
from edgeplane.shared.ids import derive_env_id, is_env_id, validate_env_id
from edgeplane.shared.logs import Redactor
from edgeplane.shared.settings import (
    Setting,
    add_flags,
    broker_url,
    choice,
    env_id,
    positive_float,
    positive_int,
    resolve,
    text,
    topic_root,
)
from edgeplane.shared.topics import DEFAULT_ROOT, ParsedTopic, TopicKind, TopicRoot

ROOT = TopicRoot("edgeplane/v1")


# --- topics --------------------------------------------------------------------------------
ENV_BUILDERS: list[tuple[Callable[[TopicRoot, str], str], TopicKind, str]] = [
    (TopicRoot.status, TopicKind.STATUS, "edgeplane/v1/env/{env}/status"),
    (TopicRoot.events, TopicKind.EVENTS, "edgeplane/v1/env/{env}/events"),
    (TopicRoot.cmd, TopicKind.CMD, "edgeplane/v1/env/{env}/cmd"),
    (TopicRoot.view, TopicKind.VIEW, "edgeplane/v1/view/{env}"),
    (TopicRoot.alerts, TopicKind.ALERTS, "edgeplane/v1/alerts/{env}"),
]


@pytest.mark.parametrize(("build", "kind", "shape"), ENV_BUILDERS)
@pytest.mark.parametrize("env", ["a", "prod-berlin-vision", "x" * 63, "0-9"])
def test_every_env_topic_round_trips(
    build: Callable[[TopicRoot, str], str], kind: TopicKind, shape: str, env: str
) -> None:
    topic = build(ROOT, env)
    assert topic == shape.format(env=env)
    assert ROOT.parse(topic) == ParsedTopic(kind, env)


def test_controller_status_round_trips() -> None:
    assert ROOT.controller_status() == "edgeplane/v1/controller/status"
    assert ROOT.parse(ROOT.controller_status()) == ParsedTopic(TopicKind.CONTROLLER_STATUS, None)


def test_default_root_and_other_roots() -> None:
    assert TopicRoot().value == DEFAULT_ROOT == "edgeplane/v1"
    root = TopicRoot("site/7/edgeplane")
    assert str(root) == "site/7/edgeplane"
    assert root.status("dev-a") == "site/7/edgeplane/env/dev-a/status"
    assert root.parse("site/7/edgeplane/view/dev-a") == ParsedTopic(TopicKind.VIEW, "dev-a")


def test_subscription_filters() -> None:
    assert ROOT.all_status() == "edgeplane/v1/env/+/status"
    assert ROOT.all_events() == "edgeplane/v1/env/+/events"
    assert ROOT.all_views() == "edgeplane/v1/view/+"
    assert ROOT.all_alerts() == "edgeplane/v1/alerts/+"
    assert ROOT.everything() == "edgeplane/v1/#"


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/env/dev-a/status",  # another root
        "edgeplane/v2/env/dev-a/status",
        "edgeplane/v1x/env/dev-a/status",  # the root as a mere prefix
        "edgeplane/v1",
        "edgeplane/v1/",
        "edgeplane/v1/env/dev-a/status/extra",  # extra levels
        "edgeplane/v1/env/dev-a",
        "edgeplane/v1/env/dev-a/bogus",
        "edgeplane/v1/view/dev-a/x",
        "edgeplane/v1/alerts",
        "edgeplane/v1/controller/status/x",
        "edgeplane/v1/controller",
        "edgeplane/v1/env/Dev-A/status",  # invalid ids
        "edgeplane/v1/env/-dev/status",
        "edgeplane/v1/env//status",
        "edgeplane/v1/view/" + "x" * 64,
        "edgeplane/v1/env/+/status",  # wildcards
        "edgeplane/v1/view/+",
        "edgeplane/v1/alerts/#",
        "edgeplane/v1/#",
        "/edgeplane/v1/view/dev-a",
    ],
)
def test_parse_rejects_anything_outside_the_tree(topic: str) -> None:
    with pytest.raises(InvalidTopic, match="topic"):
        ROOT.parse(topic)


@pytest.mark.parametrize("build", [b for b, _, _ in ENV_BUILDERS])
@pytest.mark.parametrize("env", ["", "+", "#", "a/b", "UPPER", "dev-", "x" * 64])
def test_builders_only_make_valid_topics(build: Callable[[TopicRoot, str], str], env: str) -> None:
    with pytest.raises(InvalidId):
        build(ROOT, env)


@pytest.mark.parametrize(
    "value", ["", "/", "a/", "/a", "a//b", "a/+/b", "a/#", "#", "$SYS", "a\x00b"]
)
def test_invalid_roots_are_refused(value: str) -> None:
    with pytest.raises(InvalidTopic, match="invalid topic root"):
        TopicRoot(value)


# --- ids -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value", ["a", "0", "ab", "a-b", "a--b", "dev-berlin-vision", "a" * 63, "9" + "-" * 61 + "9"]
)
def test_valid_env_ids(value: str) -> None:
    assert is_env_id(value)
    assert validate_env_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 64,
        "-a",
        "a-",
        "-",
        "A",
        "dev-Berlin",
        "a_b",
        "a.b",
        "a b",
        "a/b",
        "a+",
        "é",
        "a\n",
    ],
)
def test_invalid_env_ids(value: str) -> None:
    assert not is_env_id(value)
    with pytest.raises(InvalidId, match="invalid environment id") as caught:
        validate_env_id(value)
    assert repr(value) in str(caught.value)


def test_derive_env_id() -> None:
    assert (
        derive_env_id("prod", "Berlin Plant", "vision_inspect")
        == "prod-berlin-plant-vision-inspect"
    )
    assert derive_env_id("dev", "  lab 3 ", "cloud") == "dev-lab-3-cloud"
    assert is_env_id(derive_env_id("staging", "x" * 20, "y" * 20))


def test_derive_env_id_refuses_bad_stages_and_long_results() -> None:
    with pytest.raises(InvalidId, match="invalid stage 'test'"):
        derive_env_id("test", "berlin", "vision")
    with pytest.raises(InvalidId, match="invalid environment id"):
        derive_env_id("prod", "x" * 40, "y" * 40)


# --- broker URLs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "scheme", "host", "port"),
    [
        ("mqtt://broker.example:1884", "mqtt", "broker.example", 1884),
        ("mqtt://broker.example", "mqtt", "broker.example", 1883),
        ("mqtts://broker.example", "mqtts", "broker.example", 8883),
        ("mqtts://10.0.0.5:443", "mqtts", "10.0.0.5", 443),
        ("mqtt://127.0.0.1:1883/", "mqtt", "127.0.0.1", 1883),
        ("mqtt://[::1]:18830", "mqtt", "::1", 18830),
        ("mqtts://[fe80::1]", "mqtts", "fe80::1", 8883),
    ],
)
def test_broker_url_parse(text: str, scheme: str, host: str, port: int) -> None:
    url = BrokerUrl.parse(text)
    assert (url.scheme, url.host, url.port) == (scheme, host, port)
    assert url.tls == (scheme == "mqtts")
    assert BrokerUrl.parse(str(url)) == url


def test_broker_url_str_brackets_ipv6() -> None:
    assert str(BrokerUrl("mqtt", "::1", 1884)) == "mqtt://[::1]:1884"
    assert str(DEFAULT_BROKER) == "mqtt://127.0.0.1:1883"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("http://broker:1883", "expected mqtt://HOST:PORT"),
        ("tcp://broker:1883", "expected mqtt://HOST:PORT"),
        ("ws://broker:9001", "expected mqtt://HOST:PORT"),
        ("broker:1883", "expected mqtt://HOST:PORT"),
        ("", "expected mqtt://HOST:PORT"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:1883/topic", "unexpected path"),
        ("mqtt://broker:1883?x=1", "unexpected path or query"),
        ("mqtt://broker:1883#frag", "unexpected path or query"),
        ("mqtt://broker:99999", "out of range"),
        ("mqtt://broker:port", "invalid broker URL"),
        ("mqtt://broker:0", "port 0"),
        ("mqtt://[::1", "invalid broker URL"),
    ],
)
def test_broker_url_rejects_with_a_clear_message(text: str, words: str) -> None:
    with pytest.raises(InvalidBrokerUrl, match=words):
        BrokerUrl.parse(text)


def test_broker_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidBrokerUrl, match="no user name or password") as caught:
        BrokerUrl.parse("mqtt://operator:hunter22@broker:1883")
    assert "hunter22" not in str(caught.value)


# --- layered settings ----------------------------------------------------------------------
SETTINGS = [
    Setting("broker", broker_url, DEFAULT_BROKER, "broker URL"),
    Setting("heartbeat_interval", positive_float, 10.0, "seconds between heartbeats"),
    Setting("flap_high", positive_int, 6, "flap threshold"),
    Setting("log_format", choice("auto", "console", "json"), "auto", "log format"),
    Setting("env_id", env_id, None, "environment id"),
    Setting("topic_root", topic_root, TopicRoot(), "topic root"),
]


def write_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "edgeplane.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_defaults_when_nothing_is_given() -> None:
    resolved = resolve(SETTINGS, {}, environ={})
    assert resolved == {
        "broker": DEFAULT_BROKER,
        "heartbeat_interval": 10.0,
        "flap_high": 6,
        "log_format": "auto",
        "env_id": None,
        "topic_root": TopicRoot(),
    }


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        'heartbeat_interval = 3\nflap-high = 9\nlog_format = "json"\nenv_id = "from-file"\n',
    )
    environ = {"EDGEPLANE_FLAP_HIGH": "12", "EDGEPLANE_ENV_ID": "from-env"}
    flags = {"env_id": "from-flag", "broker": None}
    resolved = resolve(SETTINGS, flags, environ=environ, config_file=config)
    assert resolved["env_id"] == "from-flag"  # flag > env > file
    assert resolved["flap_high"] == 12  # env > file (kebab-case key in the file)
    assert resolved["heartbeat_interval"] == 3.0  # file > default, a TOML number
    assert resolved["log_format"] == "json"
    assert resolved["broker"] == DEFAULT_BROKER  # default


def test_flags_come_from_argparse_with_none_meaning_not_given() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, SETTINGS)
    flags = parser.parse_args(["--flap-high", "4", "--broker", "mqtts://b"])
    resolved = resolve(SETTINGS, flags, environ={"EDGEPLANE_FLAP_HIGH": "5"})
    assert resolved["flap_high"] == 4
    assert resolved["broker"] == BrokerUrl("mqtts", "b", 8883)
    assert "EDGEPLANE_HEARTBEAT_INTERVAL" in parser.format_help()


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "message"),
    [
        ({"flap_high": "0"}, {}, "", "--flap-high: expected a positive whole number, got '0'"),
        ({}, {"EDGEPLANE_FLAP_HIGH": "many"}, "", "EDGEPLANE_FLAP_HIGH: expected a positive whole"),
        ({}, {}, "flap_high = true", "edgeplane.toml: flap_high: expected a positive whole number"),
        ({}, {}, "flap_high = 2.5", "flap_high: expected a positive whole number"),
        ({}, {}, "flap_high = inf", "flap_high: expected a positive whole number"),
        ({}, {"EDGEPLANE_HEARTBEAT_INTERVAL": "nan"}, "", "EDGEPLANE_HEARTBEAT_INTERVAL"),
        ({"heartbeat_interval": "inf"}, {}, "", "--heartbeat-interval: expected a positive"),
        ({}, {}, 'heartbeat-interval = "-1"', "heartbeat-interval: expected a positive"),
        ({"log_format": "xml"}, {}, "", "--log-format: expected one of auto, console, json"),
        ({}, {"EDGEPLANE_ENV_ID": "Bad_Id"}, "", "EDGEPLANE_ENV_ID: invalid environment id"),
        ({}, {}, "env_id = 7", "env_id: expected a non-empty string"),
        ({"broker": "http://x"}, {}, "", "--broker: invalid broker URL 'http://x'"),
        ({}, {"EDGEPLANE_TOPIC_ROOT": "a/#"}, "", "EDGEPLANE_TOPIC_ROOT: invalid topic root"),
        ({}, {}, "flap_hihg = 3", "unknown setting 'flap_hihg'"),
    ],
)
def test_bad_values_name_the_setting_and_the_source(
    tmp_path: Path, flags: dict[str, Any], environ: dict[str, str], toml: str, message: str
) -> None:
    config = write_toml(tmp_path, toml)
    with pytest.raises(SettingsError) as caught:
        resolve(SETTINGS, flags, environ=environ, config_file=config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_bad_value_in_a_lower_source_is_not_reached(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "flap_high = -3\n")
    assert resolve(SETTINGS, {"flap_high": "2"}, {}, config)["flap_high"] == 2


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--config: no such file"):
        resolve(SETTINGS, {}, {}, tmp_path / "missing.toml")
    broken = write_toml(tmp_path, "flap_high = = 3\n")
    with pytest.raises(SettingsError, match="is not valid TOML"):
        resolve(SETTINGS, {}, {}, broken)
    with pytest.raises(SettingsError, match="--config: cannot read"):
        resolve(SETTINGS, {}, {}, tmp_path)  # a directory


def test_settings_errors_are_edgeplane_errors() -> None:
    assert issubclass(SettingsError, EdgeplaneError)
    assert issubclass(SettingsError, ValueError)
    with pytest.raises(ValueError, match="non-empty"):
        text("   ")


# --- backoff -------------------------------------------------------------------------------
def test_backoff_doubles_is_jittered_within_half_and_full_and_capped() -> None:
    backoff = Backoff(initial=0.5, cap=8.0, rng=random.Random(7))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0] + [8.0] * 200
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_jitter_spreads_a_fleet() -> None:
    delays = {
        Backoff(initial=1.0, cap=1.0, rng=random.Random(seed)).next_delay() for seed in range(50)
    }
    assert len(delays) == 50
    assert min(delays) >= 0.5
    assert max(delays) <= 1.0


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(initial=1.0, cap=30.0, rng=random.Random(1))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_backoff_survives_very_many_attempts() -> None:
    backoff = Backoff(initial=0.1, cap=5.0)
    delays = [backoff.next_delay() for _ in range(10_000)]
    assert all(2.5 <= delay <= 5.0 for delay in delays[6:])


@pytest.mark.parametrize(
    ("initial", "cap", "factor", "words"),
    [(0.0, 1.0, 2.0, "initial"), (2.0, 1.0, 2.0, "initial <= cap"), (1.0, 5.0, 0.0, "factor")],
)
def test_backoff_refuses_bad_arguments(
    initial: float, cap: float, factor: float, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        Backoff(initial=initial, cap=cap, factor=factor)


# --- redaction -----------------------------------------------------------------------------
class Pair(NamedTuple):
    name: str
    value: str


def redact(redactor: Redactor, event: dict[str, Any]) -> MutableMapping[str, Any]:
    return redactor(None, "info", event)


def test_redactor_masks_secrets_in_nested_values() -> None:
    redactor = Redactor()
    redactor.add(["s3cr3t-token", "hunter2"])
    event = {
        "event": "connecting with s3cr3t-token",
        "headers": {"auth": "Bearer s3cr3t-token", "deep": [{"pw": ("x", "hunter2!")}]},
        "count": 3,
        "none": None,
    }
    masked = redact(redactor, event)
    assert masked == {
        "event": "connecting with ***",
        "headers": {"auth": "Bearer ***", "deep": [{"pw": ("x", "***!")}]},
        "count": 3,
        "none": None,
    }


def test_redactor_masks_a_secret_that_contains_another_whole() -> None:
    redactor = Redactor()
    redactor.add(["abc", "abcdef-long-secret"])
    assert redact(redactor, {"event": "x abcdef-long-secret y abc"})["event"] == "x *** y ***"


def test_redactor_handles_named_tuples() -> None:
    redactor = Redactor()
    redactor.add(["hunter2"])
    masked = redact(redactor, {"pair": Pair("pw", "hunter2")})
    assert masked["pair"] == ("pw", "***")


def test_redactor_ignores_very_short_values_and_can_be_cleared() -> None:
    redactor = Redactor()
    redactor.add(["ab", "", "secret"])
    assert redact(redactor, {"event": "ab secret"})["event"] == "ab ***"
    redactor.clear()
    assert redact(redactor, {"event": "ab secret"})["event"] == "ab secret"


def test_derive_env_id_refuses_a_part_with_nothing_to_name_it_by() -> None:
    with pytest.raises(InvalidId, match="invalid location '%%%'"):
        derive_env_id("dev", "%%%", "vision")
    with pytest.raises(InvalidId, match="invalid purpose '--'"):
        derive_env_id("dev", "lab", "--")
