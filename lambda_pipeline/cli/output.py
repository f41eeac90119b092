"""How the command line prints answers and reports: tables, JSON lines and CSV on stdout, notes on stderr."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from lambda_pipeline.core.clock import session_time, utc_text

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from lambda_pipeline.maintenance.audit import ViewAudit

__all__ = ["print_audits", "print_frame", "print_rows"]


def print_rows(columns: list[str], rows: Sequence[Sequence[object]], fmt: str, limit: int) -> int:
    """Print at most ``limit`` of ``rows`` as a table, JSON lines or CSV; the number printed.

    ``rows`` may hold one more than ``limit``: that one says the answer was cut. A table says so in its last
    line; JSON and CSV, which a program reads, say so on stderr, so that their output stays well formed.
    """
    shown = rows[:limit]
    if fmt == "json":
        for row in shown:
            print(json.dumps(dict(zip(columns, row, strict=True)), default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[("" if v is None else v) for v in row] for row in shown])
    else:
        cells = [[("NULL" if v is None else str(v)) for v in row] for row in shown]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        line = "+".join("-" * (w + 2) for w in widths)
        print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        print(line)
        for r in cells:
            print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        if len(rows) > limit:
            print(f"... (more than {limit} rows; use --limit)")
    if len(rows) > limit and fmt != "table":
        sys.stdout.flush()
        print(f"query: the answer has more than {limit} rows; printed the first {limit} (use --limit)", file=sys.stderr)
    return len(shown)


def print_frame(frame: DataFrame, fmt: str, limit: int) -> int:
    """:func:`print_rows` of a DataFrame, reading at most ``limit + 1`` rows of it."""
    from pyspark.sql import Row

    def plain(value: object) -> object:
        if isinstance(value, Row):  # JSON shows a nested row as an object
            return value.asDict(recursive=True)
        if isinstance(value, datetime):  # collect() gives this machine's local time: back to the session's UTC
            return session_time(value)
        return value

    rows = [tuple(plain(v) for v in row) for row in frame.limit(limit + 1).collect()]
    return print_rows(frame.columns, rows, fmt, limit)


def print_audits(audits: Sequence[ViewAudit], fmt: str) -> None:
    """``audit``'s report: a paragraph per view and publication, with the windows that differ."""
    if fmt == "json":
        for one in audits:
            print(json.dumps(one.as_dict(), default=str))
        return
    for one in audits:
        print(
            f"audit: {one.view}, publication {one.publication[:8]} (tags {one.tags[0] + 1}..{one.tags[1]}): "
            f"{one.differing:g} of {one.events:g} events differ ({one.share:.4%})"
            + (f"; {one.note}" if one.note else "")
        )
        differing = [r for r in one.rows if r.difference]
        if differing:
            print(f"  {'window_start':<20} {'measure':<16} {'speed':>12} {'batch':>12} {'difference':>12}")
        for r in differing:
            window = utc_text(r.window_start) if r.window_start else "all time"
            print(f"  {window:<20} {r.measure:<16} {r.speed:>12g} {r.batch:>12g} {r.difference:>+12g}")
