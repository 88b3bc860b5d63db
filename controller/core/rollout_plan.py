"""A rollout's plan (pure): its selector, its waves and its failure threshold, read from
the operator's text, and the environments of each wave.

- A selector is ``K=V[,K=V...]``: every pair must hold. ``stage``, ``location``,
  ``purpose`` and ``project`` match those fields of the environment record, any other key
  its label of that name. Retired records never match.
- Waves are cumulative shares of the matched environments: ``1,10%,50%,100%`` is one
  environment first, then up to a tenth of them, half, all. A count is that many, a share
  is rounded up (so every wave holds at least one). A wave that would add nobody is
  dropped, and the last wave always takes every environment left (so ``1,10%`` covers the
  whole set). The order is stable: by environment id.
- ``--max-failures`` is a share of the targets finished (``10%``) or a count (``3``): the
  rollout may carry on while the failures are at most that.

Every function raises :class:`~edgeplane.shared.errors.RequestRefused` (code ``invalid``)
with one sentence naming the flag: the controller refuses a bad request with it, the
command line turns it into a usage error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from edgeplane.controller.core.registry import Environment
from edgeplane.shared.errors import RequestRefused

__all__ = [
    "DEFAULT_WAVES",
    "RECORD_FIELDS",
    "Threshold",
    "check_selector",
    "matches",
    "parse_selector",
    "parse_threshold",
    "parse_waves",
    "plan_waves",
    "selector_text",
]

RECORD_FIELDS: Final = ("stage", "location", "purpose", "project")
DEFAULT_WAVES: Final = ("1", "10%", "50%", "100%")
_KEY: Final = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")
_COUNT: Final = re.compile(r"^[0-9]+$")
_SHARE: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%$")
MAX_WAVES: Final = 100


def _refuse(flag: str, text: str) -> RequestRefused:
    return RequestRefused("invalid", f"{flag}: {text}")


def parse_selector(text: str) -> dict[str, str]:
    """``K=V[,K=V...]`` as a mapping; a repeated key with another value is refused."""
    selector: dict[str, str] = {}
    if not text.strip():
        raise _refuse("--selector", "expected K=V[,K=V...], got nothing")
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise _refuse("--selector", f"expected K=V, got {part.strip()!r}")
        if not _KEY.match(key):
            raise _refuse("--selector", f"bad key {key!r} (letters, digits, . _ / -)")
        if len(value) > 256:
            raise _refuse("--selector", f"the value of {key} is longer than 256 characters")
        if selector.get(key, value) != value:
            raise _refuse("--selector", f"{key} given twice ({selector[key]!r} and {value!r})")
        selector[key] = value
    return selector


def check_selector(selector: Mapping[str, str]) -> dict[str, str]:
    """A selector that came over the wire, checked like :func:`parse_selector`'s."""
    if not selector:
        raise _refuse("--selector", "expected at least one K=V")
    return parse_selector(",".join(f"{k}={v}" for k, v in selector.items()))


def selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in selector.items())


def matches(selector: Mapping[str, str], record: Environment) -> bool:
    """Whether the (active) ``record`` holds every pair of ``selector``."""
    if record.retired is not None:
        return False
    for key, value in selector.items():
        held = getattr(record, key) if key in RECORD_FIELDS else record.labels.get(key)
        if held != value:
            return False
    return True


def parse_waves(specs: Iterable[str]) -> tuple[str, ...]:
    """The waves, each a count (``5``) or a share (``10%``), checked: positive, a share at
    most 100%, and never below the wave before it of the same kind."""
    waves = tuple(spec.strip() for spec in specs)
    if not waves or any(not spec for spec in waves):
        raise _refuse("--waves", "expected a list like 1,10%,50%,100%")
    if len(waves) > MAX_WAVES:
        raise _refuse("--waves", f"at most {MAX_WAVES} waves, got {len(waves)}")
    last_count, last_share = 0, 0.0
    for spec in waves:
        if _COUNT.match(spec):
            count = int(spec)
            if count < 1:
                raise _refuse("--waves", f"a wave holds at least 1 environment, got {spec}")
            if count < last_count:
                raise _refuse("--waves", f"{spec} is below {last_count} before it (cumulative)")
            last_count = count
            continue
        share = _SHARE.match(spec)
        if share is None:
            raise _refuse("--waves", f"expected a count (5) or a share (10%), got {spec!r}")
        value = float(share.group(1))
        if not 0 < value <= 100:
            raise _refuse("--waves", f"a share is within (0%, 100%], got {spec}")
        if value < last_share:
            raise _refuse("--waves", f"{spec} is below {last_share:g}% before it (cumulative)")
        last_share = value
    return waves


def _cumulative(spec: str, total: int) -> int:
    share = _SHARE.match(spec)
    if share is None:
        return min(total, int(spec))
    return min(total, max(1, math.ceil(float(share.group(1)) * total / 100 - 1e-9)))


def plan_waves(envs: Sequence[str], waves: Sequence[str]) -> list[list[str]]:
    """``envs`` (any order) cut into the waves, by id: each wave the environments it adds."""
    ordered = sorted(set(envs))
    total = len(ordered)
    planned: list[list[str]] = []
    done = 0
    for spec in waves:
        upto = max(done, _cumulative(spec, total))
        if upto > done:
            planned.append(ordered[done:upto])
            done = upto
    if done < total:
        if planned:
            planned[-1].extend(ordered[done:])
        else:
            planned.append(ordered[done:])
    return planned


@dataclass(frozen=True, slots=True)
class Threshold:
    """At most ``count`` failures, or at most ``share`` percent of the targets finished."""

    text: str
    count: int | None = None
    share: float | None = None

    def exceeded(self, failures: int, finished: int) -> bool:
        if self.count is not None:
            return failures > self.count
        assert self.share is not None
        return finished > 0 and failures * 100 > self.share * finished + 1e-9


def parse_threshold(text: str) -> Threshold:
    """``--max-failures``: ``10%`` or ``3``."""
    spec = text.strip()
    if _COUNT.match(spec):
        return Threshold(spec, count=int(spec))
    share = _SHARE.match(spec)
    if share is None or not 0 <= float(share.group(1)) <= 100:
        raise _refuse("--max-failures", f"expected a share (10%) or a count (3), got {text!r}")
    return Threshold(spec, share=float(share.group(1)))
