"""The controller keys an agent trusts to sign its commands, across command key rotations.

The settings' keys (``command_key``, ``command_keys``) are where it starts; a ``trust``
command adds a key, a ``distrust`` command drops one (also one from the settings, which
the agent cannot edit). What the commands changed is kept in
``{state_dir}/trusted-keys.json`` (mode 0600, replaced atomically), so a restarted agent
trusts what it trusted before. A distrust that would leave no key, or that drops the key
that signed it, is refused: the agent never ends up trusting no one.

Only base64 and SHA-256 here: PyNaCl stays out of the idle agent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from edgeplane.edge_agent.errors import StateDirError
from edgeplane.edge_agent.state import write_atomically
from edgeplane.shared.command_signature import key_id, parse_public_key
from edgeplane.shared.logs import get_logger

__all__ = ["TRUSTED_KEYS_FILE", "TrustedKeys"]

TRUSTED_KEYS_FILE: Final = "trusted-keys.json"

log = get_logger(__name__)

KeyChange = tuple[bool, str]  # (ok, detail) of a trust or distrust command


class TrustedKeys:
    """The settings' keys, plus those added, minus those dropped (see the module doc)."""

    def __init__(self, state_dir: Path, settings_keys: Sequence[bytes]) -> None:
        self.path = state_dir / TRUSTED_KEYS_FILE
        self._settings = list(dict.fromkeys(settings_keys))
        self._added: list[bytes] = []
        self._dropped: list[str] = []  # key ids
        self._load()

    def keys(self) -> list[bytes]:
        """Every public key trusted now, once each."""
        every = dict.fromkeys([*self._settings, *self._added])
        return [key for key in every if key_id(key) not in self._dropped]

    def key_ids(self) -> list[str]:
        return [key_id(key) for key in self.keys()]

    def trust(self, public_key: str) -> KeyChange:
        """A ``trust`` command: ``public_key`` (base64) is trusted from now on."""
        try:
            key = parse_public_key(public_key)
        except ValueError as exc:
            return False, f"not trusted: {exc}"
        name = key_id(key)
        if key in self.keys():
            return True, f"key {name} is trusted already"
        if name in self._dropped:
            self._dropped.remove(name)
        if key not in self._settings and key not in self._added:
            self._added.append(key)
        self._save()
        log.info("command key trusted", key_id=name, trusted=self.key_ids())
        return True, f"key {name} trusted; trusted now: {', '.join(self.key_ids())}"

    def distrust(self, name: str, signed_by: str) -> KeyChange:
        """A ``distrust`` command signed by the key ``signed_by``: key ``name`` is dropped."""
        trusted = self.key_ids()
        if name not in trusted:
            return True, f"key {name} is not trusted"
        if trusted == [name]:
            return False, f"key {name} is the only key this agent trusts: not dropped"
        if name == signed_by:
            return False, f"key {name} signed this command: a key cannot drop itself"
        self._dropped.append(name)
        self._added = [key for key in self._added if key_id(key) != name]
        self._save()
        log.info("command key dropped", key_id=name, trusted=self.key_ids())
        return True, f"key {name} dropped; trusted now: {', '.join(self.key_ids())}"

    # the file ----------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="ascii"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise StateDirError(_corrupt(self.path, exc)) from exc
        try:
            self._added = [parse_public_key(text) for text in data["added"]]
            self._dropped = [str(name) for name in data["dropped"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise StateDirError(_corrupt(self.path, exc)) from exc

    def _save(self) -> None:
        data = {
            "added": [base64.b64encode(key).decode("ascii") for key in self._added],
            "dropped": self._dropped,
        }
        write_atomically(self.path, json.dumps(data, indent=1).encode("ascii") + b"\n")


def _corrupt(path: Path, exc: BaseException) -> str:
    return (
        f"{str(path)!r} is corrupt ({exc}); remove it to trust only the command keys of the "
        "settings again"
    )
