"""Identities in settings files: every command reads ``username``, ``password``, ``ca_file``
(or ``ca_pem``), ``cert_file`` and ``key_file``; a file holding a password or key must be
its owner's alone; the password never shows in a repr or a log line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgeplane.controller.cli.up import settings_of
from edgeplane.controller.daemon.settings import load_settings
from edgeplane.controller.operator.settings import load_operator_settings, load_view_settings
from edgeplane.edge_agent.config import add_arguments, load_config
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.identity import Identity, Password


def _settings_file(tmp_path: Path, text: str, mode: int = 0o600, name: str = "site") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


LOGIN = 'broker = "mqtt://127.0.0.1:1883"\nusername = "ops"\npassword = "s3cr3t-pa55"\n'


def test_every_command_reads_the_identity_of_its_settings_file(tmp_path: Path) -> None:
    config = _settings_file(tmp_path, LOGIN)
    agent_file = _settings_file(tmp_path, LOGIN + 'env_id = "dev-a-b"\n', name="agent")
    identities = [
        load_settings({"config": str(config)}, environ={}).broker.identity,
        load_operator_settings({"config": str(config)}, environ={}).broker.identity,
        load_view_settings({}, environ={"EDGEPLANE_CONFIG": str(config)}).broker.identity,
        load_config({"config": str(agent_file)}, environ={}).broker.identity,
    ]
    for identity in identities:
        assert identity is not None
        assert identity.username == "ops"
        assert identity.password is not None
        assert identity.password.reveal() == "s3cr3t-pa55"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_settings_file_with_a_password_open_to_others_is_refused(
    tmp_path: Path, mode: int
) -> None:
    config = _settings_file(tmp_path, LOGIN, mode)
    with pytest.raises(SettingsError) as caught:
        load_operator_settings({"config": str(config)}, environ={})
    message = str(caught.value)
    assert str(config) in message
    assert f"{mode:04o}" in message
    assert "chmod 600" in message


def test_a_settings_file_without_secrets_may_be_world_readable(tmp_path: Path) -> None:
    config = _settings_file(tmp_path, 'broker = "mqtt://127.0.0.1:1884"\n', 0o644)
    assert load_operator_settings({"config": str(config)}, environ={}).broker.port == 1884


def test_a_password_never_crosses_the_network_in_plain_text(tmp_path: Path) -> None:
    config = _settings_file(tmp_path, LOGIN.replace("127.0.0.1", "broker.example.com"))
    with pytest.raises(SettingsError, match="mqtts://"):
        load_operator_settings({"config": str(config)}, environ={})


def test_a_client_key_open_to_others_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_text("not used before the key is checked")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    flags = {"cert_file": str(cert), "key_file": str(key)}
    with pytest.raises(SettingsError) as caught:
        load_operator_settings(flags, environ={})
    assert str(key) in str(caught.value)
    assert "0644" in str(caught.value)


def test_a_bad_ca_file_is_named_before_anything_connects(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("this is not a certificate\n")
    flags = {"broker": "mqtts://127.0.0.1:8883", "ca_file": str(ca)}
    with pytest.raises(SettingsError, match="ca_file: cannot set up TLS"):
        load_operator_settings(flags, environ={})


def test_a_password_is_no_flag_but_comes_from_the_environment(tmp_path: Path) -> None:
    environ = {"EDGEPLANE_USERNAME": "ops", "EDGEPLANE_PASSWORD": "s3cr3t-pa55"}
    identity = load_operator_settings({}, environ=environ).broker.identity
    assert identity is not None
    assert identity.password == Password("s3cr3t-pa55")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "--password" not in parser.format_help()


def test_the_password_never_shows_in_a_repr() -> None:
    identity = Identity(username="ops", password=Password("s3cr3t-pa55"))
    assert "s3cr3t" not in repr(identity)
    assert "s3cr3t" not in f"{identity.password}"


def test_up_reads_its_settings_file(tmp_path: Path) -> None:
    config = _settings_file(tmp_path, 'port = 18830\nws_port = 0\ntopic_root = "site/v1"\n')
    args = argparse.Namespace(config=str(config))
    for name in ("broker", "broker_kind", "port", "ws_port", "topic_root", "state_dir"):
        setattr(args, name, None)
    args.heartbeat_interval = args.log_format = None
    settings = settings_of(args, environ={})
    assert (settings.port, settings.ws_port, str(settings.topic_root)) == (18830, None, "site/v1")


def test_the_agent_reads_the_controllers_public_key_from_a_file(tmp_path: Path) -> None:
    from tests.support.command_key import PUBLIC_KEY

    pub = tmp_path / "command-key.pub"
    pub.write_text(PUBLIC_KEY + "\n")
    config = load_config({"env_id": "dev-a-b", "command_key_file": str(pub)}, environ={})
    assert PUBLIC_KEY in config.command_keys
    pub.write_text("not a key\n")
    with pytest.raises(SettingsError, match="holds no public key"):
        load_config({"env_id": "dev-a-b", "command_key_file": str(pub)}, environ={})
