"""Views declared once, compiled into the batch job, the speed job and the serving SQL.

A view is: a source of events, optional derived columns and filter, grouping keys, an optional event-time
window, and named *mergeable* aggregates (:mod:`lambda_pipeline.core.aggregates`). Batch and speed compute
the aggregates' partial states with :meth:`View.partials`; serving merges any union of them with
:meth:`View.finalize`. The same declaration drives all three, so they cannot drift.

>>> import lambda_pipeline as lp
>>> hot = lp.View(  # doctest: +SKIP
...     "device_overheating",
...     source=readings,
...     columns={"device_id": "device.id", "temperature": "metrics.temperature_c"},
...     where="temperature > 80",
...     keys=("device_id",),
...     window=lp.TumblingWindow("ts", "1 hour"),
...     measures={"readings": lp.count(), "max_temp": lp.max_of("temperature")},
... )
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyspark.sql import types as T

from lambda_pipeline.core.aggregates import (
    NOT_MERGEABLE,
    Aggregate,
    State,
    approx_distinct,
    approx_quantile,
    avg_of,
    count,
    max_of,
    min_of,
    state_type,
    sum_of,
)
from lambda_pipeline.core.errors import ViewDefinitionError
from lambda_pipeline.core.events import (
    IDENTIFIER,
    INGEST_TAG,
    INGESTED_AT,
    INGESTED_AT_MAX,
    RAW,
    RESERVED,
    SOURCE_FILE,
    WINDOW_END,
    WINDOW_START,
    EventSource,
    quote,
)
from lambda_pipeline.core.expressions import PINNED_SESSION, derive, impure_call, referenced, resolve_types
from lambda_pipeline.core.windows import HoppingWindow, TumblingWindow, Window, with_windows

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = [
    "INGESTED_AT",
    "INGESTED_AT_MAX",
    "INGEST_TAG",
    "RAW",
    "SOURCE_FILE",
    "WINDOW_END",
    "WINDOW_START",
    "Aggregate",
    "EventSource",
    "HoppingWindow",
    "TumblingWindow",
    "View",
    "Window",
    "approx_distinct",
    "approx_quantile",
    "avg_of",
    "count",
    "max_of",
    "min_of",
    "state_type",
    "sum_of",
]


def _grouped(rows: DataFrame, group: list[str], aggs: list[Column]) -> DataFrame:
    """``rows`` aggregated per ``group``; with no group, one row once there is a row (not a row of empty
    states over no rows, as a global aggregate gives: an empty sketch has no quantile)."""
    from pyspark.sql import functions as F

    if group:
        return rows.groupBy(*group).agg(*aggs)
    return rows.groupBy(F.lit(0).alias("_all")).agg(*aggs).drop("_all")


@dataclass(frozen=True)
class View:
    """A view, declared once; checked against its source when it is created, and by Spark when a job starts.

    - ``keys``: the columns it groups by (source or derived); none gives one row per window, or one in all;
    - ``window``: a :class:`TumblingWindow`, a :class:`HoppingWindow`, or None for all-time totals per key;
    - ``measures``: name -> mergeable aggregate;
    - ``columns``: derived columns, name -> SQL expression over the source's fields (``"device.site"``,
      ``"lower(country)"``, ``"amount * rate"``); a later one may use an earlier one;
    - ``where``: a SQL predicate over source and derived columns; only the rows it keeps are counted.
    """

    name: str
    source: EventSource
    keys: tuple[str, ...] = ()
    window: Window | None = None
    measures: Mapping[str, Aggregate] = field(default_factory=dict)
    description: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None
    _types: dict[str, T.DataType] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", (self.keys,) if isinstance(self.keys, str) else tuple(self.keys))
        object.__setattr__(self, "measures", dict(self.measures))
        object.__setattr__(self, "columns", dict(self.columns))
        where = f"view '{self.name}'"
        if not IDENTIFIER.match(self.name):
            raise ViewDefinitionError(f"{where}: the name must be an identifier (letters, digits, '_')")
        if not isinstance(self.source, EventSource):
            raise ViewDefinitionError(f"{where}: source must be an lp.EventSource, got {type(self.source).__name__}")
        self._check_columns(where)
        known = self.known_columns
        for key in self.keys:
            if key not in known:
                raise ViewDefinitionError(
                    f"{where}: key '{key}' is neither a source field nor a derived column {known}"
                )
        if len(set(self.keys)) != len(self.keys):
            raise ViewDefinitionError(f"{where}: keys repeat: {list(self.keys)}")
        self._check_window(where, known)
        self._check_measures(where, known)

    def _check_columns(self, where: str) -> None:
        fields = set(self.source.schema.fieldNames())
        for name, expression in self.columns.items():
            if not IDENTIFIER.match(name) or name in RESERVED:
                raise ViewDefinitionError(f"{where}: derived column name {name!r} must be an identifier, not reserved")
            if name in fields:
                raise ViewDefinitionError(f"{where}: derived column {name!r} hides the source field of that name")
            if not isinstance(expression, str) or not expression.strip():
                raise ViewDefinitionError(
                    f"{where}: derived column {name!r} needs a SQL expression, got {expression!r}"
                )
        for what, expression in [*self.columns.items(), *([("where", self.where)] if self.where is not None else [])]:
            if not isinstance(expression, str) or not expression.strip():
                raise ViewDefinitionError(f"{where}: {what} needs a SQL predicate, got {expression!r}")
            impure = impure_call(expression)
            if impure:
                raise ViewDefinitionError(f"{where}: {what} = {expression!r}: {impure}")

    def _check_window(self, where: str, known: list[str]) -> None:
        if self.window is None:
            return
        if not isinstance(self.window, Window):
            raise ViewDefinitionError(
                f"{where}: window must be lp.TumblingWindow, lp.HoppingWindow or None (all time), got {self.window!r}"
            )
        column = self.window.column
        if column not in known:
            raise ViewDefinitionError(f"{where}: window column '{column}' is not in {known}")
        if column in self.source.schema.fieldNames() and not isinstance(
            self.source.column_type(column), T.TimestampType
        ):
            raise ViewDefinitionError(f"{where}: window column '{column}' must be a timestamp")

    def _check_measures(self, where: str, known: list[str]) -> None:
        if not self.measures:
            raise ViewDefinitionError(f"{where}: declare at least one measure, e.g. measures={{'events': lp.count()}}")
        taken = set(self.keys) | RESERVED
        for measure, aggregate in self.measures.items():
            if not isinstance(aggregate, Aggregate):
                hint = NOT_MERGEABLE.get(str(aggregate).lower())
                raise ViewDefinitionError(
                    f"{where}: measure '{measure}' is {aggregate!r}, which is not a mergeable aggregate"
                    + (
                        f"; {hint}"
                        if hint
                        else "; use count, sum_of, min_of, max_of, avg_of, approx_distinct or approx_quantile"
                    )
                )
            if not IDENTIFIER.match(measure):
                raise ViewDefinitionError(f"{where}: measure name {measure!r} must be an identifier")
            if aggregate.column is not None:
                if aggregate.column not in known:
                    raise ViewDefinitionError(
                        f"{where}: measure '{measure}': {aggregate.kind}({aggregate.column}) names an unknown column; "
                        f"source '{self.source.name}' and the derived columns have {known}"
                    )
                if aggregate.column in self.source.schema.fieldNames():
                    aggregate.check_input(measure, self.source.column_type(aggregate.column), where)
            for state in aggregate.states:
                name = aggregate.state_name(measure, state)
                if name in taken:
                    raise ViewDefinitionError(f"{where}: column '{name}' of measure '{measure}' clashes")
                taken.add(name)

    # ---- columns and their types ---------------------------------------------------------

    @property
    def known_columns(self) -> list[str]:
        """What keys, measures and the window may name: the source's fields, then the derived columns."""
        return [*self.source.schema.fieldNames(), *self.columns]

    @property
    def windowed(self) -> bool:
        return self.window is not None

    def resolve(self, spark: object | None = None) -> View:
        """Check the derived columns and the filter with Spark's analysis and learn their types (once).

        Every job does this before it starts (:meth:`Pipeline.check`); without ``spark`` the active session
        is used. Refuses, with the reason, what the declaration alone could not tell.
        """
        if self._types is not None:
            return self
        if not self.columns and self.where is None:  # nothing for Spark to analyse
            object.__setattr__(self, "_types", {})
            return self
        from pyspark.sql import SparkSession

        session = spark if isinstance(spark, SparkSession) else SparkSession.getActiveSession()
        if session is None:
            raise ViewDefinitionError(
                f"view '{self.name}': its derived columns need a Spark session to be checked; start one first"
            )
        where = f"view '{self.name}'"
        types = resolve_types(session, where, self.source.schema, self.columns, self.where)
        object.__setattr__(self, "_types", types)
        for measure, aggregate in self.measures.items():
            if aggregate.column in types:
                aggregate.check_input(measure, types[aggregate.column], where)
        window = self.window.column if self.window is not None else None
        if window in types and not isinstance(types[window], T.TimestampType):
            raise ViewDefinitionError(f"{where}: window column '{window}' must be a timestamp")
        return self

    def column_type(self, column: str) -> T.DataType:
        """The type of a source field or a derived column (a derived one is learnt from Spark, once)."""
        if column in self.source.schema.fieldNames():
            return self.source.column_type(column)
        types = self.resolve()._types
        assert types is not None
        return types[column]

    def _nullable(self, column: str) -> bool:
        return self.source.schema[column].nullable if column in self.source.schema.fieldNames() else True

    # ---- identity ----------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """A digest of everything that decides the view's states: keys, window, filter, derived columns,
        measures and the states they compile to, the partial schema, the source's id column, and (for a view
        with expressions) the pinned session settings. Serving never merges states of two fingerprints; a
        changed view is recomputed (``lambda-pipeline refresh --view``)."""
        definition: dict[str, object] = {
            "id": self.source.id_column,
            "keys": list(self.keys),
            "window": "all time" if self.window is None else self.window.definition(),
            "partial": self.partial_sql(),
            "merge": self.merge_sql(),
            "schema": self.partial_schema(by_tag=False).jsonValue(),
        }
        if self.columns or self.where is not None:
            definition |= {"columns": list(self.columns.items()), "where": self.where, "session": dict(PINNED_SESSION)}
        text = json.dumps(definition, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- compiled forms ---------------------------------------------------------------

    @property
    def reads(self) -> frozenset[str]:
        """The source fields the view's states depend on: a backfill of one of them recomputes the view."""
        fields = set(self.source.schema.fieldNames())
        named = {self.source.id_column, *self.keys, *(a.column for a in self.measures.values() if a.column)}
        if self.window is not None:
            named.add(self.window.column)
        for expression in [*self.columns.values(), *([self.where] if self.where else [])]:
            named |= referenced(expression, fields)
        return frozenset(named & fields)

    @property
    def group_columns(self) -> tuple[str, ...]:
        return (*self.keys, WINDOW_START, WINDOW_END) if self.window is not None else self.keys

    def state_columns(self) -> list[tuple[str, State]]:
        return [
            (aggregate.state_name(measure, state), state)
            for measure, aggregate in self.measures.items()
            for state in aggregate.states
        ]

    def partial_sql(self) -> list[str]:
        """``expr AS state`` items, computed over events by both batch and speed."""
        return [f"{state.partial} AS {quote(name)}" for name, state in self.state_columns()]

    def merge_sql(self) -> list[str]:
        """``final(merge(state)) AS measure`` items, run by serving over unioned states."""
        items = []
        for measure, aggregate in self.measures.items():
            merged = [state.merge.format(s=quote(aggregate.state_name(measure, state))) for state in aggregate.states]
            items.append(f"{aggregate.final.format(*merged)} AS {quote(measure)}")
        return items

    def counted(self, events: DataFrame) -> DataFrame:
        """The rows the view counts: derived columns added, the filter applied, one row per window an event
        is in."""
        from pyspark.sql import functions as F

        rows = derive(events, self.columns) if self.columns else events
        if self.where is not None:
            rows = rows.filter(F.expr(self.where))
        return with_windows(rows, self.window) if self.window is not None else rows

    def partials(self, events: DataFrame, *, by_tag: bool) -> DataFrame:
        """Mergeable state per key and window (and per ingest tag, for the speed layer)."""
        from pyspark.sql import functions as F

        group = [*self.group_columns, *([INGEST_TAG] if by_tag else [])]
        aggs = [F.expr(item) for item in self.partial_sql()]
        if by_tag:
            aggs.append(F.max(INGESTED_AT).alias(INGESTED_AT_MAX))
        return _grouped(self.counted(events), group, aggs)

    def finalize(self, states: DataFrame) -> DataFrame:
        """Merge any union of partial states into the view users read."""
        from pyspark.sql import functions as F

        return _grouped(states, list(self.group_columns), [F.expr(item) for item in self.merge_sql()])

    def partial_schema(self, *, by_tag: bool) -> T.StructType:
        """The schema :meth:`partials` produces, from the declaration (and, for derived columns, their types):
        what the batch and speed tables are created with, and what serving reads before anything was published."""
        fields = [T.StructField(key, self.column_type(key), self._nullable(key)) for key in self.keys]
        if self.window is not None:
            fields += [
                T.StructField(WINDOW_START, T.TimestampType(), True),
                T.StructField(WINDOW_END, T.TimestampType(), True),
            ]
        if by_tag:
            fields.append(T.StructField(INGEST_TAG, T.LongType(), False))
        for measure, aggregate in self.measures.items():
            column_type = None if aggregate.column is None else self.column_type(aggregate.column)
            for state in aggregate.states:
                dtype, nullable = state_type(state.kind, column_type)
                fields.append(T.StructField(aggregate.state_name(measure, state), dtype, nullable))
        if by_tag:
            fields.append(T.StructField(INGESTED_AT_MAX, T.TimestampType(), True))
        return T.StructType(fields)

    def state_column_names(self) -> tuple[str, ...]:
        """The columns of a partial state, in order: what batch and speed states share."""
        return (*self.group_columns, *(name for name, _ in self.state_columns()))
