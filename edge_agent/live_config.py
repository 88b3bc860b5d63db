"""The settings in force: the local ones (flags, environment, file) with the controller's
overrides laid over them, changed at run time by ``update`` commands.

An update is checked whole (:func:`~edge_agent.config.plan_update`), kept in the state
directory (:class:`~edge_agent.state.OverridesStore`) and applied at once: the log level,
the endpoints (changed in place in :attr:`LiveConfig.endpoints`, the mapping the executor
reads) and the heartbeat interval (through ``on_interval``, so that the new interval goes
out in an online message right away).
"""

from __future__ import annotations

from collections.abc import Callable

from edgeplane.edge_agent.commands import UpdateOutcome
from edgeplane.edge_agent.config import AgentConfig, UpdateRefused, plan_update, with_overrides
from edgeplane.edge_agent.errors import StateDirError
from edgeplane.edge_agent.state import OverridesStore
from edgeplane.shared.logs import get_logger, set_level
from edgeplane.shared.messages import Update

__all__ = ["LiveConfig"]

log = get_logger(__name__)


class LiveConfig:
    def __init__(
        self,
        local: AgentConfig,
        store: OverridesStore,
        on_interval: Callable[[float], None],
    ) -> None:
        self.local = local
        self._store = store
        self._overrides = store.load()
        self._on_interval = on_interval
        self.config = with_overrides(local, self._overrides)
        self.endpoints = dict(self.config.endpoints)  # name -> URL, changed in place

    def apply_update(self, command: Update) -> UpdateOutcome:
        try:
            overrides = plan_update(
                self._overrides,
                interval=command.interval,
                config=command.config,
                labels=command.labels,
            )
            self._store.save(overrides)
        except (UpdateRefused, StateDirError) as exc:
            log.warning("update refused", cmd=command.id, reason=str(exc))
            return False, str(exc)
        self._overrides = overrides
        self._apply(with_overrides(self.local, overrides))
        changed = [key for key in ("interval", "labels") if getattr(command, key)]
        changed += sorted(command.config)
        log.info("update applied", cmd=command.id, changed=changed)
        return True, "applied: " + (", ".join(changed) or "nothing to change")

    def _apply(self, config: AgentConfig) -> None:
        old, self.config = self.config, config
        if config.log_level != old.log_level:
            set_level(config.log_level)
        for name in set(self.endpoints) - set(config.endpoints):
            del self.endpoints[name]
        self.endpoints.update(config.endpoints)
        if config.heartbeat_interval != old.heartbeat_interval:
            self._on_interval(config.heartbeat_interval)
