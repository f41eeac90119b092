"""Event-time windows: which windows an event counts in, as SQL that every layer runs the same way.

A window's bounds are arithmetic on epoch seconds, never Spark's ``window()``: the same expression then serves
SQL and DataFrames, and it depends on no session setting (time zone included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import ViewDefinitionError
from lambda_pipeline.core.events import WINDOW_END, WINDOW_START, quote

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["HoppingWindow", "TumblingWindow", "Window", "with_windows"]


def _whole_seconds(what: str, size: str) -> int:
    try:
        seconds = duration_seconds(size)
    except ValueError as exc:
        raise ViewDefinitionError(f"{what}: {exc}") from None
    if seconds < 1 or seconds != int(seconds):
        raise ViewDefinitionError(f"{what} must be a whole number of seconds, got {size!r}")
    return int(seconds)


@dataclass(frozen=True)
class Window:
    """What every event-time window has: a timestamp ``column`` and a ``size``. Declare one of the two kinds."""

    column: str
    size: str

    def __post_init__(self) -> None:
        _whole_seconds("window size", self.size)

    @property
    def seconds(self) -> int:
        return _whole_seconds("window size", self.size)

    @property
    def slide_seconds(self) -> int:
        return self.seconds

    @property
    def per_event(self) -> int:
        """How many windows one event counts in."""
        return 1

    def definition(self) -> list[object]:
        """What the fingerprint records (unchanged since tumbling windows were the only kind)."""
        return [self.column, float(self.seconds)]

    def start_sql(self) -> str:
        """The start of the (last) window holding the event."""
        step = self.slide_seconds
        return f"timestamp_seconds(floor(unix_seconds({quote(self.column)}) / {step}) * {step})"

    def end_sql(self) -> str:
        return f"{self.start_sql()} + make_dt_interval(0, 0, 0, {self.seconds})"


@dataclass(frozen=True)
class TumblingWindow(Window):
    """Fixed, non-overlapping windows of ``size`` over the timestamp ``column``: each event counts in one.

    >>> TumblingWindow("event_time", "1 minute").seconds
    60
    """


@dataclass(frozen=True)
class HoppingWindow(Window):
    """Windows of ``size`` starting every ``slide``: each event counts in every window that holds it.

    ``size`` must be a whole multiple of ``slide``, so that every event counts in exactly ``size / slide`` windows.

    >>> HoppingWindow("ts", "1 hour", "15 minutes").per_event
    4
    """

    slide: str = ""

    def __post_init__(self) -> None:
        size = _whole_seconds("window size", self.size)
        slide = _whole_seconds("window slide", self.slide)
        if size % slide:
            raise ViewDefinitionError(
                f"hopping window: size {self.size!r} must be a whole multiple of slide {self.slide!r}, so that each "
                "event counts in the same number of windows"
            )

    @property
    def slide_seconds(self) -> int:
        return _whole_seconds("window slide", self.slide)

    @property
    def per_event(self) -> int:
        return self.seconds // self.slide_seconds

    def definition(self) -> list[object]:
        return [self.column, float(self.seconds), float(self.slide_seconds)]


def with_windows(events: DataFrame, window: Window) -> DataFrame:
    """``events`` with ``window_start`` and ``window_end``: one row per window an event counts in."""
    from pyspark.sql import functions as F

    last = F.expr(window.start_sql())
    if window.per_event == 1:
        start = last
    else:
        # The windows holding t start at last - i*slide, i in 0..k-1: t - start < slide + (k-1)*slide = size.
        back = F.explode(F.sequence(F.lit(0), F.lit(window.per_event - 1)))
        events = events.select("*", back.alias("_hop"))
        start = F.expr(f"{window.start_sql()} - make_dt_interval(0, 0, 0, _hop * {window.slide_seconds})")
    bucketed = events.select("*", start.alias(WINDOW_START))
    end = F.col(WINDOW_START) + F.expr(f"make_dt_interval(0, 0, 0, {window.seconds})")
    bucketed = bucketed.select("*", end.alias(WINDOW_END))
    return bucketed.drop("_hop") if window.per_event > 1 else bucketed
