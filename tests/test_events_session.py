"""The controller's persistent events session lives under a client id nobody can guess,
kept beside its database so that the session (and the events the broker keeps for it)
survives restarts."""

from __future__ import annotations

import stat
from pathlib import Path

from edgeplane.controller.daemon.links import EVENTS_ID_FILE, events_client_id
from edgeplane.controller.daemon.settings import ControllerSettings


def test_the_events_client_id_is_random_private_and_kept(tmp_path: Path) -> None:
    settings = ControllerSettings(db=tmp_path / "controller.db")
    first = events_client_id(settings)
    assert first.startswith("edgeplane-events-")
    assert len(first.removeprefix("edgeplane-events-")) == 16
    assert events_client_id(settings) == first  # a restart keeps the session
    kept = tmp_path / EVENTS_ID_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    other = ControllerSettings(db=tmp_path / "other" / "controller.db")
    (tmp_path / "other").mkdir()
    assert events_client_id(other) != first  # not derived from anything public


def test_a_damaged_id_file_gets_a_new_id(tmp_path: Path) -> None:
    (tmp_path / EVENTS_ID_FILE).write_text("not an id\n")
    made = events_client_id(ControllerSettings(db=tmp_path / "controller.db"))
    assert (tmp_path / EVENTS_ID_FILE).read_text().strip() == made.removeprefix("edgeplane-events-")
