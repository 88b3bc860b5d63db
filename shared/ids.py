"""Environment ids: topic-safe names, one per runtime target."""

from __future__ import annotations

import re
from typing import Final

from edgeplane.shared.errors import InvalidId

__all__ = ["ENV_ID_PATTERN", "STAGES", "derive_env_id", "is_env_id", "validate_env_id"]

ENV_ID_PATTERN: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
STAGES: Final = ("dev", "staging", "prod")


def is_env_id(value: str) -> bool:
    return ENV_ID_PATTERN.fullmatch(value) is not None


def validate_env_id(value: str) -> str:
    """Return ``value`` if it is a valid environment id, else raise :class:`InvalidId`."""
    if not is_env_id(value):
        raise InvalidId(
            f"invalid environment id {value!r}: use 1-63 lowercase letters, digits and "
            "inner hyphens (pattern ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$)"
        )
    return value


def derive_env_id(stage: str, location: str, purpose: str) -> str:
    """The default id of an environment, ``{stage}-{location}-{purpose}``."""
    if stage not in STAGES:
        raise InvalidId(f"invalid stage {stage!r}: expected one of {', '.join(STAGES)}")
    parts = [_slug(part) for part in (stage, location, purpose)]
    for name, given in (("location", location), ("purpose", purpose)):
        if not _slug(given):
            raise InvalidId(
                f"invalid {name} {given!r}: it needs a letter or digit to name the environment"
            )
    return validate_env_id("-".join(parts))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
