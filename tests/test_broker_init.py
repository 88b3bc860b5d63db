"""``edgeplane broker init``: the site directory it writes, and the broker it makes, attacked
with a hand-written paho client (anonymous, wrong password, plain text, a wrong CA, one
environment against another, a viewer that tries to act)."""

from __future__ import annotations

import base64
import datetime
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edgeplane.controller.broker.certs import make_ca
from edgeplane.controller.broker.dynsec import find_dynsec_plugin, hash_password
from edgeplane.controller.broker.mosquitto import find_mosquitto
from edgeplane.controller.broker.process import port_open
from edgeplane.controller.broker.site import SiteOptions, default_hosts, init_site, validate_host
from edgeplane.controller.cli.main import main
from edgeplane.controller.core.acl import CONTROL_TOPIC, CONTROLLER_USER
from edgeplane.controller.errors import SiteInitError
from edgeplane.shared.topics import TopicRoot
from tests.support.site import (
    NOT_AUTHORIZED,
    DynsecAdmin,
    Identity,
    NoSession,
    SiteBroker,
)

GRANTED = 1  # SUBACK: granted at QoS 1
ACCEPTED = (0, 16)  # PUBACK: success, or "no matching subscribers" (delivered to no one)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def written(tmp_path: Path) -> SiteBroker:
    """A site written (not started) in this test's own directory."""
    return SiteBroker.create(tmp_path / "site", TopicRoot("site/edgeplane/v1"))


# --- what broker init writes ----------------------------------------------------------------
def test_the_site_directory_holds_every_file_with_tight_modes(written: SiteBroker) -> None:
    site = written.directory
    private = ["ca.key", "server.key", "dynamic-security.json", "controller.toml", "admin.toml"]
    public = ["mosquitto.conf", "ca.crt", "server.crt"]
    assert sorted(p.name for p in site.iterdir()) == sorted([*private, *public, "data"])
    assert _mode(site) == 0o700
    assert _mode(site / "data") == 0o700
    assert {name: _mode(site / name) for name in private} == dict.fromkeys(private, 0o600)
    assert {name: _mode(site / name) for name in public} == dict.fromkeys(public, 0o644)


def test_every_line_of_the_config_has_a_comment_above_it(written: SiteBroker) -> None:
    lines = written.result.layout.config.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert number > 0, f"no comment: {line!r}"
            assert lines[number - 1].startswith("#"), f"no comment: {line!r}"


def test_the_config_is_what_the_site_needs_with_absolute_paths(written: SiteBroker) -> None:
    settings = [
        line.split(" ", 1)
        for line in written.result.layout.config.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    values = dict(settings)  # the last of each setting
    site = written.directory
    assert values["per_listener_settings"] == "false"
    assert values["allow_anonymous"] == "false"
    assert values["plugin"] == str(find_dynsec_plugin())
    assert values["plugin_opt_config_file"] == str(site / "dynamic-security.json")
    assert values["persistence_location"] == f"{site / 'data'}/"
    assert values["user"] == pwd.getpwuid(os.geteuid()).pw_name
    listeners = [value for key, value in settings if key == "listener"]
    assert listeners == [str(written.port), str(written.ws_port)]
    assert [value for key, value in settings if key == "protocol"] == ["mqtt", "websockets"]
    assert [value for key, value in settings if key == "tls_version"] == ["tlsv1.2"] * 2
    for key in ("certfile", "keyfile", "cafile", "log_dest"):
        for value in (v for k, v in settings if k == key):
            assert value == "stderr" or Path(value.removeprefix("file ")).is_absolute()


def test_the_settings_files_hold_each_identity_for_the_tls_listener(written: SiteBroker) -> None:
    layout = written.result.layout
    controller = tomllib.loads(layout.controller_toml.read_text())
    admin = tomllib.loads(layout.admin_toml.read_text())
    common = {
        "broker": f"mqtts://localhost:{written.port}",
        "topic_root": "site/edgeplane/v1",
        "ca_file": str(layout.ca_cert),
    }
    assert controller == {
        **common,
        "username": CONTROLLER_USER,
        "password": controller["password"],
        "db": str(layout.root / "controller.db"),
    }
    assert admin == {**common, "username": "admin", "password": admin["password"]}
    for password in (controller["password"], admin["password"]):
        assert len(password) >= 22  # token_urlsafe: 22 characters are 128 bits
    assert controller["password"] != admin["password"]


def test_the_plugin_file_has_the_roles_and_no_password_in_clear(written: SiteBroker) -> None:
    text = written.result.layout.dynsec.read_text()
    dynsec = json.loads(text)
    assert dynsec["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": True,
        "subscribe": False,
        "unsubscribe": True,
    }
    clients = {c["username"]: c for c in dynsec["clients"]}
    assert sorted(clients) == ["admin", CONTROLLER_USER]
    assert {r["rolename"] for r in dynsec["roles"]} == {
        "edgeplane-controller",
        "edgeplane-operator-admin",
    }
    for identity in (written.admin, written.controller):
        assert identity.password not in text
        client = clients[identity.username]
        salt = base64.b64decode(client["salt"])
        assert hash_password(identity.password, salt=salt, iterations=client["iterations"]) == {
            k: client[k] for k in ("password", "salt", "iterations")
        }
    controller_acls = next(r for r in dynsec["roles"] if r["rolename"] == "edgeplane-controller")
    assert {
        "acltype": "publishClientSend",
        "topic": CONTROL_TOPIC,
        "allow": True,
        "priority": 0,
    } in (controller_acls["acls"])


def test_the_server_certificate_names_the_hosts_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    site = SiteBroker.create(
        tmp_path / "site", TopicRoot(), hosts=("broker.example.net", "10.1.2.3", "localhost")
    )
    layout = site.result.layout
    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.example.net", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    server.verify_directly_issued_by(ca)
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.datetime.now(datetime.UTC)
    assert server.not_valid_before_utc < now < server.not_valid_after_utc
    assert tomllib.loads(layout.admin_toml.read_text())["broker"].startswith(
        "mqtts://broker.example.net:"
    )


def test_init_prints_what_it_wrote_and_the_next_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    assert main(["broker", "init", str(site), "--port", "18883", "--ws-port", "18884"]) == 0
    out = capsys.readouterr().out
    assert f"wrote a site's broker in {site}" in out
    assert "secure WebSockets on port 18884" in out
    for command in (
        f"mosquitto -c {site}/mosquitto.conf",
        f"edgeplane controller run --config {site}/controller.toml",
        f"edgeplane env list --config {site}/admin.toml",
    ):
        assert f"  {command}\n" in out
    assert "password" not in out.replace("passwords mode 0600", "")


def _init(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeplane.controller", "broker", "init", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_existing_site_is_refused_unless_forced(tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert _init(str(site)).returncode == 0
    before = (site / "admin.toml").read_text()
    again = _init(str(site))
    assert again.returncode == 1
    assert again.stderr.startswith(f"edgeplane: {site} already holds a site (mosquitto.conf, ")
    assert "--force" in again.stderr
    assert (site / "admin.toml").read_text() == before
    forced = _init(str(site), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (site / "admin.toml").read_text() != before
    assert _mode(site / "admin.toml") == 0o600


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--host", "bad name"], "argument --host: 'bad name' is neither an IP address nor a host"),
        (["--port", "70000"], "argument --port: expected a port number 1-65535, got '70000'"),
        (["--topic-root", "a/+/b"], "--topic-root: "),
    ],
)
def test_a_bad_flag_is_named(tmp_path: Path, flags: list[str], message: str) -> None:
    result = _init(str(tmp_path / "site"), *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "site").exists()


def test_the_default_hosts_are_loopback_and_this_machines_name() -> None:
    hosts = default_hosts()
    assert hosts[:2] == ("localhost", "127.0.0.1")
    assert all(validate_host(host) == host for host in hosts)


def test_a_missing_plugin_names_where_it_was_looked_for() -> None:
    with pytest.raises(SiteInitError, match=r"not installed: looked in /nowhere, /neither"):
        find_dynsec_plugin(("/nowhere", "/neither"))


def test_the_same_port_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SiteInitError, match="--ws-port: 8883 is already the MQTT port"):
        init_site(SiteOptions(tmp_path / "site", port=8883, ws_port=8883))


# --- the broker it makes ------------------------------------------------------------------
@pytest.fixture
def site(site_broker: SiteBroker) -> SiteBroker:
    return site_broker


def _env_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def test_the_admin_connects_over_tls_with_its_files_credentials(site: SiteBroker) -> None:
    with site.client(site.admin) as admin:
        assert admin.subscribe(site.root.all_views()) == [GRANTED]
        assert admin.publish(site.root.requests(), b"{}") in ACCEPTED


def test_the_admin_connects_over_secure_websockets(site: SiteBroker) -> None:
    assert site.ws_port is not None
    with site.client(site.admin, port=site.ws_port, transport="websockets") as admin:
        assert admin.subscribe(site.root.all_views()) == [GRANTED]


def test_an_anonymous_client_is_refused(site: SiteBroker) -> None:
    assert site.client(None).connect() == NOT_AUTHORIZED


def test_a_wrong_password_is_refused(site: SiteBroker) -> None:
    wrong = site.admin.with_password("not-the-password")
    assert site.client(wrong).connect() == NOT_AUTHORIZED
    controller = site.controller.with_password(site.admin.password)
    assert site.client(controller).connect() == NOT_AUTHORIZED


def test_a_plain_text_connection_gets_no_session(site: SiteBroker) -> None:
    with pytest.raises(NoSession, match="no CONNACK"):
        site.client(site.admin, ca_file=None).connect()


def test_tls_with_another_ca_is_refused_by_the_client(site: SiteBroker, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.crt"
    other.write_bytes(make_ca("another CA", datetime.datetime.now(datetime.UTC)).cert_pem)
    with pytest.raises(NoSession, match="CERTIFICATE_VERIFY_FAILED"):
        site.client(site.admin, ca_file=other).connect()


def _retained_marker(site: SiteBroker, env: str) -> bytes:
    """A retained message on ``env``'s cmd topic, published by the controller: a client
    that subscribes it together with other filters in one SUBSCRIBE gets the retained
    messages of those filters first, so receiving the marker first shows they gave none."""
    marker = json.dumps({"marker": uuid.uuid4().hex}).encode()
    with site.client(site.controller) as controller:
        assert controller.publish(site.root.cmd(env), marker, retain=True) in ACCEPTED
    return marker


@pytest.fixture
def envs(site: SiteBroker) -> Iterator[tuple[Identity, Identity]]:
    """Environments A and B, made by the controller's user through the plugin."""
    with DynsecAdmin(site) as admin:
        yield admin.add_environment(_env_id("a")), admin.add_environment(_env_id("b"))


def test_an_environment_does_its_own_work(
    site: SiteBroker, envs: tuple[Identity, Identity]
) -> None:
    a, _ = envs
    env = a.username
    with site.client(a) as agent:
        assert agent.subscribe(site.root.cmd(env), site.root.controller_status()) == [
            GRANTED,
            GRANTED,
        ]
        assert (
            agent.publish(site.root.status(env), b'{"status": "online"}', retain=True) in ACCEPTED
        )
        assert agent.publish(site.root.events(env)) in ACCEPTED


def test_environment_a_cannot_read_bs_topics(
    site: SiteBroker, envs: tuple[Identity, Identity]
) -> None:
    a, b = envs
    root = site.root
    with site.client(b) as agent_b:
        assert agent_b.publish(root.status(b.username), b'{"secret": "b"}', retain=True) in ACCEPTED
    marker = _retained_marker(site, a.username)
    with site.client(a) as agent_a:
        assert agent_a.subscribe(root.events(b.username), root.cmd(b.username)) == [
            NOT_AUTHORIZED,
            NOT_AUTHORIZED,
        ]
        codes = agent_a.subscribe(root.status(b.username), root.cmd(a.username))
        assert codes == [NOT_AUTHORIZED, GRANTED]
        assert agent_a.next().payload == marker  # and not B's retained status


def test_environment_a_cannot_write_bs_status(
    site: SiteBroker, envs: tuple[Identity, Identity]
) -> None:
    a, b = envs
    status_b = site.root.status(b.username)
    with site.client(b) as agent_b:
        assert (
            agent_b.publish(status_b, b'{"status": "online", "by": "b"}', retain=True) in ACCEPTED
        )
    with site.client(a) as agent_a:
        fake = b'{"status": "online", "interval": 86400}'
        assert agent_a.publish(status_b, fake, retain=True) == NOT_AUTHORIZED
        assert agent_a.publish(site.root.events(b.username)) == NOT_AUTHORIZED
    with site.client(site.controller) as controller:
        assert controller.subscribe(site.root.all_status()) == [GRANTED]
        seen = controller.wait_for(lambda m: m.topic == status_b)
        assert seen[-1].payload == b'{"status": "online", "by": "b"}'


def test_an_environment_cannot_publish_any_command(
    site: SiteBroker, envs: tuple[Identity, Identity]
) -> None:
    a, b = envs
    root = site.root
    with site.client(a) as agent_a:
        assert agent_a.subscribe(root.cmd(a.username)) == [GRANTED]
        deploy = b'{"kind": "deploy", "steps": [{"run": ["sh", "-c", "id"]}]}'
        for env in (a.username, b.username):
            assert agent_a.publish(root.cmd(env), deploy) == NOT_AUTHORIZED
        marker = _retained_marker(site, a.username)
        assert agent_a.next().payload == marker  # its own denied command never arrived


def test_only_the_controller_writes_the_retained_alert_state(
    site: SiteBroker, envs: tuple[Identity, Identity]
) -> None:
    a, _ = envs
    topic = site.root.alert_state(a.username, "flapping")
    forged = b'{"kind":"flapping","state":"cleared","env":"x","ts":1.0}'
    with site.client(a) as agent:
        assert agent.publish(topic, forged, retain=True) == NOT_AUTHORIZED
        assert agent.subscribe(site.root.all_alert_states()) == [NOT_AUTHORIZED]
    with site.client(site.controller) as controller:
        assert controller.publish(topic, b"", retain=True) in ACCEPTED


def test_an_environment_cannot_subscribe_everything(
    site: SiteBroker, envs: tuple[Identity, Identity]
) -> None:
    a, _ = envs
    root = site.root
    marker = _retained_marker(site, a.username)
    wide = ["#", f"{root}/#", f"{root}/env/+/cmd", root.all_status(), "$SYS/#", "$CONTROL/#"]
    with site.client(a) as agent_a:
        assert agent_a.subscribe(*wide) == [NOT_AUTHORIZED] * len(wide)
        assert agent_a.subscribe("#", root.cmd(a.username)) == [NOT_AUTHORIZED, GRANTED]
        assert agent_a.next().payload == marker  # nothing from '#' came before it


def test_an_environments_client_id_is_its_own(
    site: SiteBroker, envs: tuple[Identity, Identity]
) -> None:
    a, b = envs
    assert site.client(a, client_id=b.username).connect() == NOT_AUTHORIZED
    assert site.client(site.admin, client_id=a.username).connect() == 0


@pytest.fixture
def viewer(site: SiteBroker) -> Identity:
    with DynsecAdmin(site) as admin:
        return admin.add_operator(_env_id("viewer"), "viewer")


def test_a_viewer_reads_but_publishes_nothing(site: SiteBroker, viewer: Identity) -> None:
    root = site.root
    with site.client(viewer) as client:
        assert (
            client.subscribe(
                root.all_views(), root.all_alerts(), root.all_events(), root.all_alert_states()
            )
            == [GRANTED] * 4
        )
        for topic in (
            root.requests(),
            root.view("any"),
            root.alerts("any"),
            root.alert_state("any", "flapping"),
            root.status("any"),
            root.events("any"),
            root.cmd("any"),
            root.controller_status(),
            root.reply(viewer.username),
            CONTROL_TOPIC,
            "elsewhere",
        ):
            assert client.publish(topic) == NOT_AUTHORIZED, topic
        assert client.subscribe(f"{root}/controller/reply/+", root.requests()) == [
            NOT_AUTHORIZED,
            NOT_AUTHORIZED,
        ]


def test_the_admin_reads_only_its_own_replies(site: SiteBroker) -> None:
    root = site.root
    with site.client(site.admin) as admin:
        assert admin.subscribe(root.reply("admin"), root.reply("someone-else")) == [
            GRANTED,
            NOT_AUTHORIZED,
        ]
        assert admin.publish(root.cmd("any")) == NOT_AUTHORIZED


# --- run as another user -------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run mosquitto as another user")
def test_a_site_owned_by_another_user_runs_as_root_and_as_that_user(tmp_path: Path) -> None:
    """A site as user ``nobody`` would have written it (its files, ``user nobody``): root's
    mosquitto drops to that user and still reads its 0600 files, and that user runs it."""
    parent = Path(tempfile.mkdtemp(prefix="edgeplane-site-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        site = SiteBroker.create(parent / "site", TopicRoot())
        config = site.result.layout.config
        config.write_text(config.read_text().replace("\nuser root\n", "\nuser nobody\n"))
        for path in [site.directory, *site.directory.rglob("*")]:
            os.chown(path, *_ids("nobody"))
        for as_user in (None, "nobody"):
            _run_and_connect(site, as_user)
    finally:
        shutil.rmtree(parent)


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _run_and_connect(site: SiteBroker, user: str | None) -> None:
    binary = find_mosquitto()
    assert binary is not None
    process = subprocess.Popen(
        [binary, "-c", str(site.result.layout.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        user=user,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", site.port):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.02)  # polling a port to come up
        admin = site.client(site.admin)
        assert admin.connect() == 0
        admin.close()
        with DynsecAdmin(site) as controller:  # the plugin can rewrite its file as that user
            controller.add_environment(_env_id("x"))
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()
