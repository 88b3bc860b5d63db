"""What runs, kept in ``{state_dir}/executor.json`` (written atomically), so that a new
executor (after an agent restart or crash) carries on: the services to start again and the
job whose step was running, each with its process group (:mod:`.recovery` reads it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

from edgeplane.edge_agent.errors import ExecutionError, StateDirError
from edgeplane.edge_agent.state import write_atomically
from edgeplane.shared.logs import get_logger
from edgeplane.shared.workflow import Workflow

__all__ = ["STATE_FILE", "JobRecord", "Record", "RecordFile", "ServiceRecord"]

STATE_FILE: Final = "executor.json"

log = get_logger(__name__)


class ServiceRecord(msgspec.Struct, frozen=True):
    dep: str
    cmd: str
    workflow: Workflow
    pgid: int | None = None


class JobRecord(msgspec.Struct, frozen=True):
    dep: str
    cmd: str
    workflow: str
    step: str
    pgid: int | None = None


class Record(msgspec.Struct):
    services: dict[str, ServiceRecord] = {}  # workflow name -> its service
    job: JobRecord | None = None


class RecordFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> Record:
        """The record of the previous executor; an empty one if there is none, or (logged)
        if it cannot be read."""
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=Record)
        except FileNotFoundError:
            return Record()
        except (OSError, msgspec.DecodeError) as exc:
            log.error(
                "executor record unreadable: starting afresh", path=str(self.path), error=str(exc)
            )
            return Record()

    def write(self, record: Record) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(self.path, msgspec.json.encode(record))
        except OSError as exc:
            raise ExecutionError(f"cannot write {str(self.path)!r}: {exc.strerror}") from exc
        except StateDirError as exc:
            raise ExecutionError(str(exc)) from exc
