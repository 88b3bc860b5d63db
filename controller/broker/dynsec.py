"""The dynamic security plugin's file and its password format (``broker init``).

The roles come from :mod:`edgeplane.controller.core.acl`; this module only puts them in the
plugin's JSON. A password is stored as the plugin stores one (mosquitto 2.0.11,
``plugins/dynamic-security/clients.c`` and ``src/password_mosq.h``): PBKDF2-HMAC-SHA512
over a random 12-byte salt, 64 bytes of hash, both base64, and the iteration count.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any, Final

from edgeplane.controller.core.acl import (
    CONTROLLER_USER,
    DEFAULT_ACCESS,
    Role,
    controller_role,
    credential_note,
    operator_role,
)
from edgeplane.controller.errors import SiteInitError
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "ADMIN_USER",
    "ITERATIONS",
    "PLUGIN_DIRS",
    "PLUGIN_FILE",
    "client_json",
    "find_dynsec_plugin",
    "hash_password",
    "new_password",
    "role_json",
    "site_dynsec",
]

ADMIN_USER: Final = "admin"
PLUGIN_FILE: Final = "mosquitto_dynamic_security.so"
PLUGIN_DIRS: Final = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/mosquitto",
    "/usr/local/lib/mosquitto",
    "/opt/homebrew/lib",
)
_SALT_BYTES: Final = 12  # SALT_LEN of mosquitto's password_mosq.h: the plugin refuses others
# The plugin's own default (PW_DEFAULT_ITERATIONS), also for clients the controller creates
# later through $CONTROL. Every password is >= 128 random bits, so the work factor adds
# nothing against guessing, and a higher one costs each connect of a large fleet.
ITERATIONS: Final = 101


def new_password() -> str:
    """A random password of 192 bits (URL-safe text, no quoting needed in TOML)."""
    return secrets.token_urlsafe(24)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> dict[str, Any]:
    """The ``password``, ``salt`` and ``iterations`` fields of a plugin client."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    if len(salt) != _SALT_BYTES:
        raise ValueError(f"the plugin takes a {_SALT_BYTES}-byte salt, got {len(salt)}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def role_json(role: Role) -> dict[str, Any]:
    return {
        "rolename": role.rolename,
        "textname": role.textname,
        "acls": [
            {"acltype": a.acltype, "topic": a.topic, "allow": a.allow, "priority": a.priority}
            for a in role.acls
        ],
    }


def client_json(
    username: str, password: str, role: Role, textname: str, textdescription: str = ""
) -> dict[str, Any]:
    described = {"textdescription": textdescription} if textdescription else {}
    return {
        "username": username,
        "textname": textname,
        **described,
        "roles": [{"rolename": role.rolename}],
        **hash_password(password),
    }


def site_dynsec(
    root: TopicRoot, controller_password: str, admin_password: str, *, made: float | None = None
) -> dict[str, Any]:
    """The plugin's whole first file: publish and subscribe denied by default, the
    controller and the first operator (``admin``, role admin, its credential's age noted
    from ``made``, now by default) with their roles."""
    controller = controller_role(root)
    admin = operator_role(root, ADMIN_USER, "admin")
    note = credential_note(time.time() if made is None else made)
    return {
        "defaultACLAccess": dict(DEFAULT_ACCESS),
        "clients": [
            client_json(CONTROLLER_USER, controller_password, controller, "the controller"),
            client_json(ADMIN_USER, admin_password, admin, "the first operator", note),
        ],
        "groups": [],
        "roles": [role_json(controller), role_json(admin)],
    }


def find_dynsec_plugin(dirs: tuple[str, ...] = PLUGIN_DIRS) -> Path:
    """The plugin's shared library, or a :class:`SiteInitError` naming where we looked."""
    for directory in dirs:
        candidate = Path(directory) / PLUGIN_FILE
        if candidate.is_file():
            return candidate
    raise SiteInitError(
        f"mosquitto's dynamic security plugin ({PLUGIN_FILE}) is not installed: looked in "
        + ", ".join(dirs)
        + " (Debian and Ubuntu ship it in the mosquitto package)"
    )
