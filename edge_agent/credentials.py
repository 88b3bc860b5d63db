"""The agent's broker credentials across rotations, and its box key.

**Box key.** At its first start the agent makes an X25519 key pair (PyNaCl ``PrivateKey``)
in ``{state_dir}/box-key.json`` (mode 0600) and reports the public half in its online
messages (``box_key``); the controller seals each new password to it (a libsodium sealed
box), so a password never crosses the broker readable. The pair is made in a short-lived
child process and the public key read back as text: the idle agent never imports PyNaCl
(about 1 MB), only the ``credentials`` command that needs the private key does.

**Logins.** The credential of the bootstrap settings (generation 0 as enrolled, or ``N``
for a user name ``env.N``) is the last resort; ``{state_dir}/credentials.json`` (0600,
replaced atomically) keeps the newest credential received (``pending``) and the one the
broker last accepted (``working``). Each connection logs in with the newest not yet
refused in this run; a CONNACK refusing it moves on to the next, so an agent killed at any
point of a rotation starts again with a credential that works. A pending credential the
broker refused is dropped, and the same one sent again is not tried again.

**Proof of possession.** A rotated credential comes with a proof (sealed with its password)
that is kept with it and reported (``cred_proof``) only by a connection logged in with it:
the controller ends a rotation on that proof, never on the generation an online claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from edgeplane.edge_agent.errors import StateDirError
from edgeplane.edge_agent.state import write_atomically
from edgeplane.shared.identity import Identity, Password
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import Credentials

__all__ = [
    "BOX_KEY_FILE",
    "CREDENTIALS_FILE",
    "CREDENTIAL_FILES",
    "CredentialOutcome",
    "CredentialStore",
    "Login",
    "ensure_box_key",
    "generation_of",
    "make_box_key",
    "open_sealed",
]

BOX_KEY_FILE: Final = "box-key.json"
CREDENTIALS_FILE: Final = "credentials.json"
CREDENTIAL_FILES: Final = (BOX_KEY_FILE, CREDENTIALS_FILE)
KEY_BYTES: Final = 32
# CONNACK reasons that say the login itself is wrong (MQTT 5 0x86, 0x87; MQTT 3 4, 5).
_LOGIN_REFUSALS: Final = ("bad user name or password", "not authorized", "not authorised")

log = get_logger(__name__)


# --- the box key -------------------------------------------------------------------------------
def make_box_key(state_dir: str) -> None:
    """Write a new key pair to ``state_dir`` (run in the child process)."""
    from nacl.public import PrivateKey

    key = PrivateKey.generate()
    data = {
        "private": base64.b64encode(bytes(key)).decode("ascii"),
        "public": base64.b64encode(bytes(key.public_key)).decode("ascii"),
    }
    write_atomically(Path(state_dir) / BOX_KEY_FILE, json.dumps(data).encode("ascii") + b"\n")


def ensure_box_key(state_dir: Path) -> str:
    """The public box key (base64), the key pair made first if there is none."""
    path = state_dir / BOX_KEY_FILE
    if not path.exists():
        _make_in_child(state_dir)
    return _read_box_key(path)["public"]


def _make_in_child(state_dir: Path) -> None:
    """The pair made in a child process, so that PyNaCl never loads in the agent's own."""
    if not hasattr(os, "fork"):
        _make_in_subprocess(state_dir)
        return
    pid = os.fork()  # at start-up, before any thread: nothing to import, nothing to copy
    if pid == 0:
        code = 1
        try:
            make_box_key(str(state_dir))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        make_box_key(str(state_dir))  # let the error show here, with its reason


def _make_in_subprocess(state_dir: Path) -> None:
    import subprocess

    code = (
        "import sys; from edgeplane.edge_agent.credentials import make_box_key; "
        "make_box_key(sys.argv[1])"
    )
    done = subprocess.run([sys.executable, "-c", code, str(state_dir)], check=False)
    if done.returncode != 0:
        make_box_key(str(state_dir))


def _read_box_key(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        for half in ("private", "public"):
            if len(base64.b64decode(data[half], validate=True)) != KEY_BYTES:
                raise ValueError(f"{half} key is not {KEY_BYTES} bytes")
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise StateDirError(
            f"{str(path)!r} is not a box key ({exc}); remove it and restart: the agent makes "
            "a new one, and the controller seals the next credential to it"
        ) from exc
    return {"private": data["private"], "public": data["public"]}


def open_sealed(state_dir: Path, sealed: str) -> tuple[str, str]:
    """The password and the proof of possession that ``sealed`` (base64) holds;
    ``ValueError`` saying why not."""
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    private = base64.b64decode(_read_box_key(state_dir / BOX_KEY_FILE)["private"])
    try:
        clear = SealedBox(PrivateKey(private)).decrypt(base64.b64decode(sealed, validate=True))
    except (CryptoError, binascii.Error, ValueError) as exc:
        raise ValueError("the sealed password does not open with this agent's box key") from exc
    try:
        data = json.loads(clear.decode("utf-8"))
        password, proof = data["password"], data["proof"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            "the sealed credential is not a JSON object with a password and a proof"
        ) from exc
    if not isinstance(password, str) or not isinstance(proof, str) or not proof:
        raise ValueError("the sealed credential's password and proof must be non-empty strings")
    return password, proof


# --- logins ----------------------------------------------------------------------------------
class Login(msgspec.Struct, frozen=True):  # not a dataclass: the agent does without them
    username: str
    password: Password
    generation: int
    # The proof of possession that came with a rotated credential (None: the enrolled one),
    # reported while logged in with it; a Password so that no repr shows it before then.
    proof: Password | None = None

    @property
    def reported_proof(self) -> str:
        """What a connection logged in with this login reports as ``cred_proof``."""
        return "" if self.proof is None else self.proof.reveal()

    @property
    def fingerprint(self) -> str:
        """Tells two logins apart without keeping the password (the refused list)."""
        text = f"{self.username}\0{self.password.reveal()}".encode()
        return hashlib.sha256(text).hexdigest()[:32]


class CredentialOutcome(msgspec.Struct, frozen=True):
    """The outcome of a ``credentials`` command: ``switch`` to log in again with it."""

    ok: bool
    switch: bool
    detail: str


def generation_of(env: str, username: str) -> int:
    """The credential generation a user name stands for: ``env.N`` is N, anything else 0."""
    head, _, tail = username.rpartition(".")
    return int(tail) if head == env and tail.isdigit() else 0


class CredentialStore:
    """The logins of one agent, newest first (see the module docstring)."""

    def __init__(self, state_dir: Path, env: str, bootstrap: Identity | None) -> None:
        self.state_dir = state_dir
        self.path = state_dir / CREDENTIALS_FILE
        self.env = env
        self._bootstrap = _bootstrap_login(env, bootstrap)
        self._pending: Login | None = None
        self._working: Login | None = None
        self._refused: list[str] = []  # fingerprints of pending logins the broker refused
        self._failed: set[str] = set()  # refused in this run: the next one is tried
        self._load()

    def candidates(self) -> list[Login]:
        found: dict[str, Login] = {}
        for login in (self._pending, self._working, self._bootstrap):
            if login is not None:
                found.setdefault(login.fingerprint, login)
        return sorted(found.values(), key=lambda login: -login.generation)

    def choose(self) -> Login | None:
        """The login for the next connection (None: the settings name no user)."""
        candidates = self.candidates()
        untried = [login for login in candidates if login.fingerprint not in self._failed]
        if not untried:
            self._failed.clear()  # every one refused: start over (the link backs off)
            untried = candidates
        return untried[0] if untried else None

    @property
    def all_refused(self) -> bool:
        """Every stored login was refused in this run (the agent is locked out)."""
        candidates = self.candidates()
        return bool(candidates) and all(c.fingerprint in self._failed for c in candidates)

    def accepted(self, login: Login) -> None:
        """CONNACK success: ``login`` works; once the pending one does, it is the one."""
        self._failed.discard(login.fingerprint)
        if self._working == login and self._pending != login:
            return
        self._working = login
        if self._pending == login:
            self._pending = None
        self._save()

    def refused(self, login: Login, reason: str) -> bool:
        """CONNACK refused ``login``; True when it was the login (then the next one is
        tried on the next connection)."""
        if not any(words in reason.lower() for words in _LOGIN_REFUSALS):
            return False
        self._failed.add(login.fingerprint)
        if self._pending == login:
            log.error(
                "the broker refused the new credential; going on with the previous one",
                username=login.username,
                generation=login.generation,
            )
            self._pending = None
            self._refused = [*self._refused[-7:], login.fingerprint]
            self._save()
        return True

    def take(self, command: Credentials) -> CredentialOutcome:
        """A ``credentials`` command: the sealed password opened and kept as pending."""
        try:
            password, proof = open_sealed(self.state_dir, command.sealed)
        except (ValueError, StateDirError) as exc:
            return CredentialOutcome(ok=False, switch=False, detail=str(exc))
        login = Login(command.username, Password(password), command.generation, Password(proof))
        if login.fingerprint in self._refused:
            detail = f"the broker refused {command.username} before; not tried again"
            return CredentialOutcome(ok=False, switch=False, detail=detail)
        if login == self._working:
            detail = f"logged in as {command.username}"
            return CredentialOutcome(ok=True, switch=False, detail=detail)
        self._pending = login
        self._save()
        detail = f"logging in as {command.username} (generation {command.generation})"
        return CredentialOutcome(ok=True, switch=True, detail=detail)

    # the file ----------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise StateDirError(_corrupt(self.path, exc)) from exc
        try:
            self._pending = _login_from(data.get("pending"))
            self._working = _login_from(data.get("working"))
            self._refused = [str(item) for item in data.get("refused", [])]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateDirError(_corrupt(self.path, exc)) from exc

    def _save(self) -> None:
        data = {
            "pending": _login_data(self._pending),
            "working": _login_data(self._working),
            "refused": self._refused,
        }
        write_atomically(self.path, json.dumps(data, indent=1).encode("utf-8") + b"\n")


def _bootstrap_login(env: str, identity: Identity | None) -> Login | None:
    if identity is None or identity.username is None:
        return None
    password = identity.password or Password("")
    return Login(identity.username, password, generation_of(env, identity.username))


def _login_data(login: Login | None) -> dict[str, Any] | None:
    if login is None:
        return None
    return {
        "username": login.username,
        "password": login.password.reveal(),
        "generation": login.generation,
        "proof": login.reported_proof,
    }


def _login_from(data: Any) -> Login | None:
    if data is None:
        return None
    username, password, generation = data["username"], data["password"], data["generation"]
    proof = data.get("proof", "")  # absent from a file written before proofs
    if not isinstance(username, str) or not isinstance(password, str):
        raise TypeError("username and password must be strings")
    if not isinstance(proof, str):
        raise TypeError("proof must be a string")
    if not isinstance(generation, int) or generation < 0:
        raise ValueError(f"generation: {generation!r}")
    return Login(username, Password(password), generation, Password(proof) if proof else None)


def _corrupt(path: Path, exc: BaseException) -> str:
    return (
        f"{str(path)!r} is corrupt ({exc}); remove it to log in with the settings' credential again"
    )
