"""The text of a site's ``mosquitto.conf`` (``broker init``): every setting with the
comment that says why it is there, every path absolute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SiteLayout", "render_site_config"]


@dataclass(frozen=True, slots=True)
class SiteLayout:
    """Where a site's files live (every path absolute)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def dynsec(self) -> Path:
        return self.root / "dynamic-security.json"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def controller_toml(self) -> Path:
        return self.root / "controller.toml"

    @property
    def admin_toml(self) -> Path:
        return self.root / "admin.toml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def controller_db(self) -> Path:
        return self.root / "controller.db"


def _tls(layout: SiteLayout) -> list[str]:
    return [
        "# This listener's certificate and key, signed by the site's CA (ca.crt).",
        f"certfile {layout.server_cert}",
        "# The server certificate's private key (mode 0600).",
        f"keyfile {layout.server_key}",
        "# The CA that client certificates must be signed by, when a client presents one.",
        f"cafile {layout.ca_cert}",
        "# TLS 1.2 at least (mosquitto 2 reads this as the minimum; 1.3 stays allowed).",
        "tls_version tlsv1.2",
    ]


def _listeners(layout: SiteLayout, port: int, ws_port: int | None) -> list[str]:
    lines = [
        "# --- listeners: TLS only, no plain-text port -------------------------------------",
        "",
        "# MQTT over TLS for the controller, operators and gateways, on every interface.",
        f"listener {port}",
        "# Plain MQTT framing inside the TLS session.",
        "protocol mqtt",
        *_tls(layout),
    ]
    if ws_port is not None:
        lines += [
            "",
            "# MQTT over secure WebSockets (wss://) for browser dashboards, on every interface",
            "# (mosquitto 2.0.11 binds a websockets listener to all of them whatever the address).",
            f"listener {ws_port}",
            "# WebSockets framing, inside the TLS session set up by the lines below.",
            "protocol websockets",
            *_tls(layout),
        ]
    return lines


def render_site_config(
    layout: SiteLayout,
    *,
    user: str,
    plugin: Path,
    port: int,
    ws_port: int | None,
    written_by: str,
) -> str:
    """The whole ``mosquitto.conf`` of a site."""
    lines = [
        f"# mosquitto 2.x configuration of an edgeplane site, written by {written_by}.",
        f"# Run it as it is, from any directory: mosquitto -c {layout.config}",
        "# Every line below has a comment above it saying why it is there.",
        "",
        "# Started as root, mosquitto drops to this user before it reads anything else: the",
        "# owner of this directory, the only one who may read its 0600 keys and passwords",
        "# (without this line it would drop to 'mosquitto', who cannot). Ignored otherwise.",
        f"user {user}",
        "",
        "# One set of security settings for every listener: the plugin below guards them all.",
        "per_listener_settings false",
        "# No connection without a user name and password that the plugin knows.",
        "allow_anonymous false",
        "",
        "# The dynamic security plugin: clients, roles and ACLs, administered at run time by",
        "# the controller over $CONTROL/dynamic-security/v1.",
        f"plugin {plugin}",
        "# The plugin's clients, password hashes and roles; it rewrites the file on changes.",
        f"plugin_opt_config_file {layout.dynsec}",
        "",
        "# Keep retained statuses, views and QoS 1 sessions across a broker restart.",
        "persistence true",
        "# The broker's database lives in the site directory, whatever the working directory.",
        f"persistence_location {layout.data}/",
        "# Save the in-memory database every 60 seconds (and on a clean stop).",
        "autosave_interval 60",
        "# Treat autosave_interval as seconds, not as a count of changes.",
        "autosave_on_changes false",
        "# Forget persistent sessions of clients gone for a week.",
        "persistent_client_expiration 7d",
        "",
        "# Refuse any MQTT packet over 1 MiB; the controller drops payloads over 64 KiB.",
        "max_packet_size 1048576",
        "# Per-client QoS 1 queue: room for the retained statuses of a 10,000-gateway fleet.",
        "max_queued_messages 100000",
        "# No separate byte limit on that queue: max_packet_size bounds each message.",
        "max_queued_bytes 0",
        "# Per-client in-flight QoS 1 window (mosquitto's default; larger measured slower).",
        "max_inflight_messages 20",
        "# The longest keepalive a client may ask for, in seconds.",
        "max_keepalive 600",
        "# Send small packets (heartbeats) at once instead of batching them (Nagle).",
        "set_tcp_nodelay true",
        "",
        "# Log to the terminal or service manager that started mosquitto.",
        "log_dest stderr",
        "# And to a file in the site directory.",
        f"log_dest file {layout.log}",
        "# Log errors.",
        "log_type error",
        "# Log warnings (refused connections among them).",
        "log_type warning",
        "# Log notices.",
        "log_type notice",
        "# Log informational lines (connects and disconnects).",
        "log_type information",
        "# Log each connect and disconnect with its client id (an agent's is its environment).",
        "connection_messages true",
        "# Time stamps in the log in a readable form.",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
        *_listeners(layout, port, ws_port),
    ]
    return "\n".join(lines) + "\n"
