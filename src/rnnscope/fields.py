"""Checks for config fields: each raises one ValueError line naming `section.key` and what
it accepts, the message a user sees after a typo on the command line or in a YAML file."""

from __future__ import annotations

import math
from collections.abc import Iterable


def choice(field: str, value, accepted: Iterable[str]) -> str:
    accepted = tuple(accepted)
    if value not in accepted:
        raise ValueError(f"{field}: unknown {value!r}; accepted: {', '.join(accepted)}")
    return value


def integer(field: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (
            minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{field}: must be an integer{bound}, got {value!r}")
    return value


def number(field: str, value, *, above: float | None = None, minimum: float | None = None,
           below: float | None = None, maximum: float | None = None) -> float:
    """A finite real number within the given bounds (`above`/`below` exclusive)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    bounds = []
    for bound, holds, word in ((above, lambda b: value > b, ">"),
                               (minimum, lambda b: value >= b, ">="),
                               (below, lambda b: value < b, "<"),
                               (maximum, lambda b: value <= b, "<=")):
        if bound is not None:
            bounds.append(f"{word} {bound:g}")
            ok = ok and holds(bound)
    if not ok:
        where = f" {' and '.join(bounds)}" if bounds else ""
        raise ValueError(f"{field}: must be a finite number{where}, got {value!r}")
    return float(value)
