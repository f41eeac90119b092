"""Times in UTC: every time this project writes, compares or prints is a timezone-aware UTC ``datetime``.

The Spark session is pinned to UTC (core/pinned.py), but PySpark converts a *naive* Python ``datetime`` with
the Python process's local time zone: ``createDataFrame`` and ``F.lit`` read one as local time, and
``collect`` returns each ``TimestampType`` value as naive local time. A naive ``datetime.now()`` written into
a record, compared with a Delta commit time or read back by a driver in another time zone is therefore
hours off. So times are made aware at the edges: :func:`utc_now` for the clock, :func:`as_utc` for what
``collect`` returns and for records read back, and comparisons with Delta's commit times are made in epoch
milliseconds inside Spark, where no Python conversion takes place.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

__all__ = ["as_utc", "epoch_ms", "iso_utc", "looks_like_time", "parse_utc", "session_time", "utc_now", "utc_text"]


def utc_now() -> datetime:
    """The current instant, aware, in UTC."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC ``datetime``.

    A naive value is read as the local time of this process: that is what PySpark's ``collect`` returns
    for a timestamp column, and what publication records written before times carried an offset hold (they
    were written by ``datetime.now()`` on the publishing driver, so they are right when read on a driver in
    the same time zone, as they always were).
    """
    return value.astimezone(timezone.utc)


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch (a naive value read as local time, as in :func:`as_utc`)."""
    moment = as_utc(value)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def session_time(value: datetime) -> datetime:
    """A timestamp of an answer's row as the UTC-pinned session shows it: UTC wall-clock time, naive (an
    answer's columns carry no offset, in Spark's output as in ours)."""
    return as_utc(value).replace(tzinfo=None)


def iso_utc(value: datetime) -> str:
    """ISO 8601 with a ``Z``, e.g. ``2026-12-07T11:37:36.512Z``: for JSON a program reads."""
    return as_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_text(value: datetime, *, seconds: bool = True) -> str:
    """A time for people, in UTC and saying so: ``2026-12-07 11:37:36Z`` (``11:37Z`` without seconds)."""
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$", re.IGNORECASE)


def looks_like_time(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 date or time (a run id is hexadecimal: it never has a ``-``)."""
    return _TIME.match(text.strip()) is not None


def parse_utc(text: str) -> datetime:
    """An ISO 8601 date or time a person typed, as an aware UTC ``datetime``: without an offset it is UTC
    (the time every message prints), never the local time of the machine it is typed on.

    Raises ValueError on anything else.
    """
    if not looks_like_time(text):
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    parsed = datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
