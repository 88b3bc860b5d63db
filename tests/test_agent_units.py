"""Pure pieces of the edge agent, without a broker: the bdseq file, heartbeat building,
settings resolution (the command path: tests/test_agent_command_path.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeplane.edge_agent import metrics, waker
from edgeplane.edge_agent.config import (
    AgentConfig,
    Overrides,
    UpdateRefused,
    load_config,
    plan_update,
    with_overrides,
)
from edgeplane.edge_agent.errors import EnvironmentRetired, StateDirError
from edgeplane.edge_agent.heartbeat import HeartbeatBuilder, message_expiry
from edgeplane.edge_agent.metrics import HostMetrics, Sample
from edgeplane.edge_agent.state import (
    BdseqStore,
    OverridesStore,
    check_not_retired,
    default_state_dir,
    retire_state_dir,
)
from edgeplane.shared import __version__
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import STATUS, encode
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.messages import OfflineStatus, OnlineStatus, Platform
from edgeplane.shared.signals import stop_signals
from edgeplane.shared.topics import TopicRoot

# --- the bdseq file --------------------------------------------------------------------------


def test_bdseq_starts_at_one_and_is_new_for_every_take(tmp_path: Path) -> None:
    store = BdseqStore(tmp_path / "state")
    assert store.last == 0
    assert [store.take(), store.take(), store.take()] == [1, 2, 3]


def test_bdseq_survives_a_restart(tmp_path: Path) -> None:
    BdseqStore(tmp_path).take()
    BdseqStore(tmp_path).take()
    again = BdseqStore(tmp_path)
    assert again.last == 2
    assert again.take() == 3
    assert (tmp_path / "bdseq").read_text() == "3\n"
    assert not list(tmp_path.glob(".bdseq.tmp")), "the temporary file is renamed away"


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    store = BdseqStore(tmp_path / "a" / "b")
    store.take()
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "b" / "bdseq").stat().st_mode & 0o077 == 0


def test_unusable_state_dir_is_refused_by_name(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateDirError, match="cannot be created") as info:
        BdseqStore(blocker / "state")
    assert str(blocker / "state") in str(info.value)


def test_corrupt_bdseq_file_is_refused_with_a_remedy(tmp_path: Path) -> None:
    (tmp_path / "bdseq").write_text("garbage\n")
    with pytest.raises(StateDirError, match=r"corrupt.*remove it"):
        BdseqStore(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_state_dir_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StateDirError, match="not writable"):
            BdseqStore(tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_default_state_dir_follows_xdg() -> None:
    assert default_state_dir("dev-a", {"XDG_STATE_HOME": "/x"}) == Path("/x/edgeplane-agent/dev-a")
    assert default_state_dir("dev-a", {}).parts[-4:] == (
        ".local",
        "state",
        "edgeplane-agent",
        "dev-a",
    )


# --- heartbeat building ----------------------------------------------------------------------


def _builder(clock: ManualClock, interval: float = 10.0) -> HeartbeatBuilder:
    return HeartbeatBuilder(
        "prod-berlin-vision",
        interval,
        clock,
        lambda: Sample(cpu=12.3, mem=45.6, disk=78.9),
        boot="a1b2c3d4",
    )


def test_online_carries_every_field_and_seq_restarts_with_each_bdseq() -> None:
    clock = ManualClock()
    builder = _builder(clock)
    builder.new_connection(7)
    first = builder.online()
    clock.advance(10)
    second = builder.online()
    assert first == OnlineStatus(
        env="prod-berlin-vision",
        bdseq=7,
        seq=0,
        interval=10.0,
        boot="a1b2c3d4",
        cpu=12.3,
        mem=45.6,
        disk=78.9,
        ver=__version__,
        up=0,
    )
    assert (second.seq, second.up) == (1, 10)
    builder.new_connection(8)
    assert (builder.online().seq, builder.online().seq) == (0, 1)
    assert builder.will() == OfflineStatus(
        env="prod-berlin-vision", bdseq=8, reason="connection-lost"
    )
    assert builder.offline("shutdown").reason == "shutdown"


def test_typical_online_payload_fits_160_bytes_and_decodes() -> None:
    clock = ManualClock()
    builder = _builder(clock)
    builder.boot = "a1b2c3"
    builder.new_connection(345)
    for _ in range(8_640):  # a day connected at a 10 s interval
        builder.online()
    clock.advance(86_400)
    payload = encode(builder.online())
    assert len(payload) <= 160, payload
    decoded = STATUS.decode(payload)
    assert isinstance(decoded, OnlineStatus)
    assert (decoded.seq, decoded.interval, decoded.up) == (8_640, 10.0, 86_400)


def test_inventory_and_platform_go_in_the_first_online_of_each_connection_only() -> None:
    clock = ManualClock()
    models = {"detector": ["2.1.0"]}
    scans: list[int] = []

    def inventory() -> dict[str, list[str]]:
        scans.append(1)
        return {name: list(versions) for name, versions in models.items()}

    facts = Platform(os="linux", arch="x86_64", py="3.11.9", agent="0.1.0")
    builder = HeartbeatBuilder(
        "dev-a", 10, clock, lambda: Sample(None, None, None), inventory=inventory, platform=facts
    )
    builder.new_connection(1)
    first, plain = builder.online(), builder.online()
    assert (first.models, first.platform) == ({"detector": ["2.1.0"]}, facts)
    assert (plain.models, plain.platform) == (None, None)
    assert b"models" not in encode(plain)
    models["segmenter"] = ["1.0"]
    changed, after = builder.online(), builder.online()
    assert changed.models == {"detector": ["2.1.0"], "segmenter": ["1.0"]}
    assert changed.platform is None
    assert after.models is None
    assert len(scans) == 4, "one look at the models per heartbeat"
    builder.new_connection(2)
    again = builder.online()
    assert again.models is not None, "a new connection: everything again"
    assert again.platform == facts


def test_logins_refused_are_told_once_in_the_next_connections_first_online() -> None:
    builder = _builder(ManualClock())
    builder.refused, builder.refused_reason = 2, "Not authorized"
    builder.new_connection(3)
    first, plain = builder.online(), builder.online()
    assert (first.refused, first.refused_reason) == (2, "Not authorized")
    assert (plain.refused, plain.refused_reason) == (0, "")
    assert b"refused" not in encode(plain)
    builder.new_connection(4)
    assert builder.online().refused == 0, "told once: the next connection had none"


def test_an_empty_models_dir_is_reported_as_no_models() -> None:
    builder = HeartbeatBuilder(
        "dev-a", 10, ManualClock(), lambda: Sample(None, None, None), inventory=dict
    )
    builder.new_connection(1)
    assert b'"models":{}' in encode(builder.online())
    assert b"models" not in encode(builder.online())


BOOT_OF_A_NEW_PROCESS = """
from edgeplane.edge_agent.heartbeat import HeartbeatBuilder
from edgeplane.edge_agent.metrics import Sample
from edgeplane.shared.clock import ManualClock
print(HeartbeatBuilder("e", 1.0, ManualClock(), lambda: Sample(None, None, None)).boot)
"""


def test_boot_id_differs_between_processes() -> None:
    """Each start of the agent process has a boot id of its own (six hex digits): five
    fresh interpreters, five boot ids."""
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", BOOT_OF_A_NEW_PROCESS], stdout=subprocess.PIPE, text=True
        )
        for _ in range(5)
    ]
    boots = [start.communicate(timeout=60)[0].strip() for start in starts]
    assert all(start.returncode == 0 for start in starts)
    assert len(set(boots)) == 5, boots
    assert all(re.fullmatch(r"[0-9a-f]{6}", boot) for boot in boots), boots


def test_message_expiry_is_about_three_intervals() -> None:
    assert message_expiry(10.0) == 30
    assert message_expiry(0.5) == 2
    assert message_expiry(0.1) == 1
    assert message_expiry(3.3) == 10


def test_host_metrics_are_percentages_with_one_decimal() -> None:
    sample = HostMetrics().sample()
    for value in (sample.cpu, sample.mem, sample.disk):
        assert value is not None
        assert 0.0 <= value <= 100.0
        assert round(value, 1) == value


def test_host_metrics_read_memory_and_disk_as_psutil_does() -> None:
    psutil = pytest.importorskip("psutil")
    sample = HostMetrics().sample()
    assert sample.mem is not None
    assert sample.disk is not None
    assert abs(sample.mem - psutil.virtual_memory().percent) <= 1.0
    assert abs(sample.disk - psutil.disk_usage("/").percent) <= 0.1


def test_cpu_is_the_busy_share_of_the_time_between_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psutil's formula: idle and iowait are not busy; guest time is in user already."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(metrics, "PROC_STAT", stat)
    stat.write_text("cpu  100 0 50 800 50 0 0 0 40 0\ncpu0 1 2 3 4\n")
    host = HostMetrics()
    stat.write_text("cpu  200 0 100 900 100 0 0 0 80 0\n")
    assert host.sample().cpu == 50.0, "busy 150 of 300 ticks (40 of user were guest)"
    assert host.sample().cpu == 0.0, "no time passed"
    stat.write_text("garbage\n")
    assert host.sample().cpu is None


# --- settings ----------------------------------------------------------------------------------


def test_settings_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        'env_id = "from-file"\nheartbeat_interval = 3\nkeepalive = 40\ntopic-root = "file/root"\n'
    )
    environ = {"EDGEPLANE_HEARTBEAT_INTERVAL": "2", "EDGEPLANE_KEEPALIVE": "50"}
    config = load_config({"config": str(config_file), "heartbeat_interval": "1.5"}, environ=environ)
    assert config.heartbeat_interval == 1.5  # flag
    assert config.keepalive == 50  # environment
    assert config.env_id == "from-file"  # file
    assert config.topic_root == TopicRoot("file/root")  # file, kebab-case key
    assert config.broker == BrokerUrl("mqtt", "127.0.0.1", 1883)  # default
    assert config.state_dir == default_state_dir("from-file", environ)


def test_config_file_may_come_from_the_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text('env_id = "dev-x"\nstate_dir = "/tmp/x"\n')
    config = load_config({}, environ={"EDGEPLANE_CONFIG": str(config_file)})
    assert config == AgentConfig(env_id="dev-x", state_dir=Path("/tmp/x"))


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        ({}, {}, "--env-id: required"),
        ({"env_id": "Bad_Id"}, {}, "--env-id: invalid environment id 'Bad_Id'"),
        (
            {"env_id": "e", "heartbeat_interval": "abc"},
            {},
            "--heartbeat-interval: expected a positive number, got 'abc'",
        ),
        (
            {"env_id": "e"},
            {"EDGEPLANE_HEARTBEAT_INTERVAL": "-1"},
            "EDGEPLANE_HEARTBEAT_INTERVAL: expected a positive number, got '-1'",
        ),
        (
            {"env_id": "e", "heartbeat_interval": "1e6"},
            {},
            "--heartbeat-interval: expected at most",
        ),
        ({"env_id": "e", "broker": "http://x"}, {}, "--broker: invalid broker URL"),
        ({"env_id": "e", "keepalive": "70000"}, {}, "--keepalive: expected at most 65535"),
        ({"env_id": "e", "log_format": "xml"}, {}, "--log-format: expected one of"),
        ({"env_id": "e", "config": "/nonexistent.toml"}, {}, "--config: no such file"),
    ],
)
def test_bad_settings_name_the_setting_and_its_source(
    flags: dict[str, str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_config(flags, environ=environ)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_config_file_values_name_the_file_and_key(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text('env_id = "e"\nheartbeat_interval = "soon"\n')
    with pytest.raises(SettingsError, match=r"agent.toml: heartbeat_interval: expected a positive"):
        load_config({"config": str(config_file)}, environ={})
    config_file.write_text('env_id = "e"\nnot_a_setting = 1\n')
    with pytest.raises(SettingsError, match="unknown setting 'not_a_setting'"):
        load_config({"config": str(config_file)}, environ={})
    config_file.write_text("env_id = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_config({"config": str(config_file)}, environ={})


def test_endpoints_come_from_the_config_files_table(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        'env_id = "dev-x"\n[endpoints]\ninference-api = "http://10.0.0.7:8080"\n'
        '"results.db" = "postgres://db/results"\n'
    )
    config = load_config({"config": str(config_file)}, environ={})
    assert config.endpoints == {
        "inference-api": "http://10.0.0.7:8080",
        "results.db": "postgres://db/results",
    }


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[endpoints]\napi = ""\n', "endpoints.api: expected a non-empty URL string"),
        ("[endpoints]\napi = 5\n", "endpoints.api: expected a non-empty URL string, got 5"),
        ('[endpoints]\n"bad name" = "http://x"\n', "endpoints.bad name: expected a name"),
        ('endpoints = "http://x"\n', "endpoints: expected a table"),
    ],
)
def test_bad_endpoints_name_the_file_and_the_endpoint(
    tmp_path: Path, table: str, message: str
) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text('env_id = "dev-x"\n' + table)
    with pytest.raises(SettingsError) as info:
        load_config({"config": str(config_file)}, environ={})
    assert str(info.value).startswith(f"{config_file}: {message}"), str(info.value)


# --- updates from the controller ---------------------------------------------------------------


def test_an_update_changes_interval_level_and_endpoints_and_keeps_the_rest() -> None:
    current = Overrides(endpoints={"old": "http://old"})
    new = plan_update(
        current,
        interval=5,
        config={"log_level": "debug", "endpoints.api": "http://api", "endpoints.old": ""},
        labels={"site": "berlin"},
    )
    assert new == Overrides(
        heartbeat_interval=5,
        log_level="debug",
        endpoints={"old": "", "api": "http://api"},
        labels={"site": "berlin"},
    )
    local = AgentConfig(
        env_id="dev-x",
        state_dir=Path("/s"),
        heartbeat_interval=10,
        endpoints={"old": "http://old", "file": "http://file"},
    )
    in_force = with_overrides(local, new)
    assert in_force.heartbeat_interval == 5
    assert in_force.log_level == "debug"
    assert in_force.endpoints == {"file": "http://file", "api": "http://api"}, "'' removes"
    assert with_overrides(local, Overrides()) == local


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"colour": "blue", "heartbeat_interval": "5"}, "unknown config keys: colour (known: "),
        ({"heartbeat_interval": "soon"}, "heartbeat_interval: expected a positive number"),
        ({"heartbeat_interval": "100000"}, "heartbeat_interval: expected at most 86400"),
        ({"log_level": "loud"}, "log_level: expected one of debug, info, warning, error"),
        ({"endpoints.bad name": "http://x"}, "endpoints.bad name: expected a name"),
    ],
)
def test_a_bad_update_is_refused_whole_naming_the_keys(
    config: dict[str, str], message: str
) -> None:
    with pytest.raises(UpdateRefused) as info:
        plan_update(Overrides(), interval=3, config=config)
    assert str(info.value).startswith(message), str(info.value)


def test_overrides_survive_in_the_state_dir_and_a_corrupt_file_is_named(tmp_path: Path) -> None:
    store = OverridesStore(tmp_path)
    assert store.load() == Overrides()
    overrides = Overrides(heartbeat_interval=2.5, endpoints={"api": "http://a"})
    store.save(overrides)
    assert OverridesStore(tmp_path).load() == overrides
    (tmp_path / "overrides.json").write_text('{"heartbeat_interval": "x"}')
    with pytest.raises(StateDirError, match=r"overrides\.json.*corrupt.*remove it"):
        store.load()


# --- retirement -------------------------------------------------------------------------------


def test_a_retired_state_dir_keeps_only_the_marker_and_is_refused(tmp_path: Path) -> None:
    BdseqStore(tmp_path).take()
    OverridesStore(tmp_path).save(Overrides(log_level="debug"))
    (tmp_path / "deployments" / "dep-1").mkdir(parents=True)
    (tmp_path / "outbox.db").write_bytes(b"x")
    check_not_retired(tmp_path)
    retire_state_dir(
        tmp_path, "dev-x", [tmp_path / "outbox.db", tmp_path / "deployments"], 1_700_000_000
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retired"]
    with pytest.raises(EnvironmentRetired) as info:
        check_not_retired(tmp_path)
    assert str(info.value) == (
        f"environment dev-x was retired on 2023-11-14 22:13:20 UTC; remove "
        f"{tmp_path / 'retired'} to reuse this state dir"
    )


def test_a_hangup_ignored_from_the_start_stays_ignored() -> None:
    """``nohup edge-agent run &``: the closed terminal's SIGHUP must not stop the agent;
    without nohup, SIGHUP stops it as SIGTERM does."""
    assert signal.SIGHUP in stop_signals()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert stop_signals() == (signal.SIGTERM, signal.SIGINT)
        with waker.stop_signals(lambda: None):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
