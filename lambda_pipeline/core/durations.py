"""Durations as people write them in configs and view declarations: ``"500 ms"``, ``"5 minutes"``.

One parser, so that a view's window, a trigger and a retention all read the same words the same way.
"""

from __future__ import annotations

import re

__all__ = ["duration_seconds", "positive_duration"]

_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"ms": 0.001, "mi": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as ``"500 ms"``, ``"1 second"`` or ``"5 minutes"``."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration like '1 second', '500 ms' or '5 minutes', got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    key = "mi" if unit.startswith("milli") else ("ms" if unit == "ms" else unit[0])
    return number * _UNIT_SECONDS[key]


def positive_duration(value: str) -> str:
    """``value`` itself if it is a duration longer than zero (a validator for duration settings)."""
    if duration_seconds(value) <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return value
