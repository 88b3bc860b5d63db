"""The rotation desk's receive-path filter and what ``env show`` says of a credential."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import msgspec

from edgeplane.controller.core.rotation import Credential, Rotations
from edgeplane.controller.daemon.rotation_desk import ROTATION_QUEUE, RotationDesk, with_credential
from edgeplane.controller.operator.env_text import env_details
from edgeplane.shared.messages import OnlineStatus
from edgeplane.shared.rpc import EnvInfo

NOW = 1_700_000_000.0
INFO = EnvInfo(id="edge-a", project="p", stage="prod", location="l", purpose="v", created=NOW)


class Rotator:
    """What the desk needs of the rotator here: its rotations; the onlines it was given."""

    def __init__(self, rotations: Rotations) -> None:
        self.rotations = rotations
        self.given: asyncio.Queue[str] = asyncio.Queue()

    async def resume(self) -> None:
        pass

    async def on_online(self, message: OnlineStatus) -> None:
        await self.given.put(message.env)


def desk(*credentials: Credential) -> tuple[RotationDesk, Rotator]:
    rotations = Rotations(None, (f"c-{n}" for n in itertools.count()), credentials)
    rotator = Rotator(rotations)
    synced = asyncio.Event()
    synced.set()
    return RotationDesk(rotator, None, None, synced), rotator  # type: ignore[arg-type]


def online(env: str, box_key: str = "") -> OnlineStatus:
    return OnlineStatus(env=env, bdseq=1, seq=3, interval=10, boot="b", box_key=box_key)


async def test_only_onlines_that_can_move_a_rotation_leave_the_receive_path() -> None:
    rotating = Credential("edge-r", box_key="K", state="sent", target=1)
    idle = Credential("edge-i", box_key="K")
    feed, rotator = desk(rotating, idle)
    feed.offer(online("edge-i"))  # a plain heartbeat of an idle credential
    feed.offer(online("edge-x"))  # never reported a key
    feed.offer(online("edge-r"))  # in rotation: its cred_gen may end it
    feed.offer(online("edge-n", box_key="K2"))  # a new box key
    feed.offer(online("edge-r"))
    serving = asyncio.create_task(feed.serve())
    try:
        given = [await asyncio.wait_for(rotator.given.get(), 5) for _ in range(3)]
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    assert given == ["edge-r", "edge-n", "edge-r"]


async def test_a_full_queue_drops_and_counts() -> None:
    feed, _ = desk()
    for _ in range(ROTATION_QUEUE + 2):
        feed.offer(online("edge-n", box_key="K"))
    assert feed.dropped == 2


def test_what_an_online_has_that_the_rotation_does_not_take_is_named_for_counting() -> None:
    rotating = Credential("edge-r", box_key="K", state="sent", target=1, proof="P" * 32)
    feed, _ = desk(rotating)
    claim = msgspec.structs.replace(online("edge-r", box_key="K2"), cred_gen=1, cred_proof="x")
    reasons = [reason for reason, _ in feed.offer(claim)]
    assert reasons == ["box-key-mismatch", "bad-credential-proof"]
    proven = msgspec.structs.replace(online("edge-r"), cred_gen=1, cred_proof="P" * 32)
    assert feed.offer(proven) == []
    assert feed.offer(online("edge-r")) == []  # still on the old credential: nothing claimed


def test_env_show_says_generation_age_and_rotation() -> None:
    credential = Credential(
        "edge-a", generation=2, since=NOW - 3 * 86_400, state="sent", target=3, started=NOW
    )
    rotations = Rotations(None, iter(()), [credential])
    info = with_credential(INFO, rotations)
    assert (info.credential_generation, info.rotation_state, info.rotation_target) == (2, "sent", 3)
    text = env_details(info, clock=lambda: NOW)
    assert "credential: generation 2, 3d old; rotating to 3 (sent)" in text


def test_a_credential_never_rotated_is_generation_0_since_enrollment() -> None:
    info = with_credential(INFO, Rotations(None, iter(())))
    assert (info.credential_generation, info.credential_since, info.rotation_state) == (0, NOW, "")
    assert "credential: generation 0, 0s old" in env_details(info, clock=lambda: NOW)
    assert "credential" not in env_details(INFO, clock=lambda: NOW)  # no broker identities
