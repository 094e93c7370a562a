"""The range checks of the toy world's settings: each returns one message per field out of range, naming the
option (`prefix` + field, e.g. `--recipe.vqvae.` + `batch_size`). A NaN is out of every range."""
from __future__ import annotations

import math
from typing import Any


def _finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


def at_least(prefix: str, obj: Any, minimum: float, *names: str) -> list[str]:
    """Fields below `minimum` (or not finite)."""
    return [f"{prefix}{n} must be >= {minimum}, got {getattr(obj, n)}" for n in names
            if not (getattr(obj, n) >= minimum and _finite(getattr(obj, n)))]


def positive(prefix: str, obj: Any, *names: str) -> list[str]:
    """Fields that are not finite numbers above 0."""
    return [f"{prefix}{n} must be > 0, got {getattr(obj, n)}" for n in names
            if not (getattr(obj, n) > 0 and _finite(getattr(obj, n)))]


def share(prefix: str, obj: Any, *names: str, below_one: bool = False) -> list[str]:
    """Fields outside [0, 1] (outside [0, 1) with `below_one`)."""
    out = []
    for n in names:
        v = getattr(obj, n)
        if not (0 <= v <= 1) or (below_one and v == 1):
            out.append(f"{prefix}{n} must be in [0, {'1)' if below_one else '1]'}, got {v}")
    return out


def value_range(prefix: str, obj: Any, name: str, low: float | None = None, high: float | None = None,
                open_low: bool = False) -> list[str]:
    """A (low, high) pair field: two finite numbers, low <= high, within [low, high] given (above `low` with
    `open_low`)."""
    v = getattr(obj, name)
    try:
        a, b = (float(x) for x in v)
    except (TypeError, ValueError):
        return [f"{prefix}{name} must be two numbers [low, high], got {v}"]
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        return [f"{prefix}{name} must be two finite numbers with low <= high, got {list(v)}"]
    if low is not None and (a < low or (open_low and a == low)):
        return [f"{prefix}{name} must lie {'above' if open_low else 'at or above'} {low}, got {list(v)}"]
    if high is not None and b > high:
        return [f"{prefix}{name} must lie at or below {high}, got {list(v)}"]
    return []
