"""Views declared once, compiled into the batch job, the speed job and the serving SQL.

A view is: a source of events, grouping keys, a tumbling event-time window and
named *mergeable* aggregates. Each aggregate knows three SQL fragments:

- ``partial``: its state over a set of events (batch and speed compute these);
- ``merge``: how states of disjoint event sets combine (serving runs these);
- ``final``: the value users read, from the merged state.

Because batch, speed and serving all use the same fragments, no aggregate is
ever written per layer, and ``final(merge(partial(A), partial(B))) ==
final(partial(A ∪ B))`` is a property of the aggregate, tested once.

>>> from lambda_pipeline.core.views import View, TumblingWindow, count, sum_of
>>> activity = View("activity", source=clicks, keys=("page",),  # doctest: +SKIP
...                 window=TumblingWindow("event_time", "1 minute"),
...                 measures={"events": count(), "total_ms": sum_of("duration_ms")})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyspark.sql import types as T

from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import ViewDefinitionError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "INGESTED_AT",
    "INGEST_TAG",
    "RAW",
    "SOURCE_FILE",
    "WINDOW_END",
    "WINDOW_START",
    "Aggregate",
    "EventSource",
    "TumblingWindow",
    "View",
    "approx_distinct",
    "approx_quantile",
    "avg_of",
    "count",
    "max_of",
    "min_of",
    "state_type",
    "sum_of",
]

INGEST_TAG = "ingest_tag"
"""Master-table commit version that brought the event in: the unit of coverage."""
INGESTED_AT = "ingested_at"
SOURCE_FILE = "source_file"
RAW = "raw"
"""The line or message as it came in. Master keeps it beside the parsed columns, so a field added to the
source later can be filled for past events (``lambda-pipeline refresh --backfill``); quarantine keeps it too."""
WINDOW_START = "window_start"
WINDOW_END = "window_end"
INGESTED_AT_MAX = "ingested_at_max"
"""Kept in speed partials so serving can tell how fresh the newest visible event is."""

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
_ORDERED = (*_NUMERIC, T.StringType, T.DateType, T.TimestampType, T.TimestampNTZType)
_HLL_INPUT = (T.IntegerType, T.LongType, T.StringType, T.BinaryType)
_RESERVED = {INGEST_TAG, INGESTED_AT, SOURCE_FILE, RAW, WINDOW_START, WINDOW_END, INGESTED_AT_MAX}


def _quote(name: str) -> str:
    return f"`{name}`"


@dataclass(frozen=True)
class EventSource:
    """The events a pipeline ingests: their schema, identity and event time."""

    name: str
    schema: T.StructType
    id_column: str
    time_column: str
    required: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = set(self.schema.fieldNames())
        for role, column in (("id_column", self.id_column), ("time_column", self.time_column)):
            if column not in names:
                raise ViewDefinitionError(
                    f"source '{self.name}': {role} '{column}' is not in its schema {sorted(names)}"
                )
        if not isinstance(self.schema[self.time_column].dataType, T.TimestampType):
            raise ViewDefinitionError(f"source '{self.name}': time_column '{self.time_column}' must be a timestamp")
        clash = names & _RESERVED
        if clash:
            raise ViewDefinitionError(f"source '{self.name}': columns {sorted(clash)} are reserved by the pipeline")
        missing = [c for c in self.required if c not in names]
        if missing:
            raise ViewDefinitionError(f"source '{self.name}': required columns {missing} are not in its schema")

    @property
    def master_schema(self) -> T.StructType:
        """The master table: the event columns plus where and when each event came in, and its raw text."""
        return T.StructType(
            [
                *self.schema.fields,
                T.StructField(INGEST_TAG, T.LongType(), False),
                T.StructField(INGESTED_AT, T.TimestampType(), False),
                T.StructField(SOURCE_FILE, T.StringType(), True),
                T.StructField(RAW, T.StringType(), True),
            ]
        )

    def column_type(self, column: str) -> T.DataType:
        return self.schema[column].dataType


@dataclass(frozen=True)
class TumblingWindow:
    """Event-time bucket: fixed, non-overlapping windows of ``size`` over ``column``."""

    column: str
    size: str

    def __post_init__(self) -> None:
        try:
            seconds = duration_seconds(self.size)
        except ValueError as exc:
            raise ViewDefinitionError(f"window size: {exc}") from None
        if seconds < 1 or seconds != int(seconds):
            raise ViewDefinitionError(f"window size must be a whole number of seconds, got {self.size!r}")

    @property
    def seconds(self) -> int:
        return int(duration_seconds(self.size))

    def start_sql(self) -> str:
        # Arithmetic rather than window(): one expression usable in SQL views and DataFrames alike.
        return f"timestamp_seconds(floor(unix_seconds({_quote(self.column)}) / {self.seconds}) * {self.seconds})"

    def end_sql(self) -> str:
        return f"{self.start_sql()} + make_dt_interval(0, 0, 0, {self.seconds})"


@dataclass(frozen=True)
class State:
    """One column of an aggregate's mergeable state.

    ``kind`` names its type rule (see :func:`state_type`), so the schema of a view's partials follows
    from the declaration alone, with no Spark job over an empty DataFrame to learn it.
    """

    suffix: str
    partial: str
    merge: str
    kind: str = "input"


# What Spark's aggregate gives, per state kind: (type from the input column's type, nullable). The law
# ``partial_schema == partials(empty).schema`` is checked for every kind and input type in tests/test_views.py.
def state_type(kind: str, column_type: T.DataType | None) -> tuple[T.DataType, bool]:
    """The type and nullability of a partial-state column of ``kind`` over a column of ``column_type``."""
    if kind == "count":
        return T.LongType(), False
    if kind == "double":
        return T.DoubleType(), True
    if kind == "sketch":
        return T.BinaryType(), False
    if column_type is None:
        raise ViewDefinitionError(f"state kind {kind!r} needs an input column")
    if kind == "input":
        return column_type, True
    if kind == "sum":
        if isinstance(column_type, T.DecimalType):
            return T.DecimalType(min(38, column_type.precision + 10), column_type.scale), True
        if isinstance(column_type, (T.FloatType, T.DoubleType)):
            return T.DoubleType(), True
        return T.LongType(), True
    raise ViewDefinitionError(f"unknown state kind {kind!r}")


@dataclass(frozen=True)
class Aggregate:
    """A mergeable aggregate. Build with :func:`count`, :func:`sum_of`, ... rather than directly."""

    kind: str
    column: str | None
    states: tuple[State, ...]
    final: str
    """SQL over the merged states: ``{0}``, ``{1}``... in the order of ``states``."""
    accepts: tuple[type, ...] = ()
    params: tuple[tuple[str, object], ...] = field(default=())

    def state_name(self, measure: str, state: State) -> str:
        return f"{measure}{state.suffix}"

    def check(self, measure: str, source: EventSource) -> None:
        if self.column is None:
            return
        if self.column not in source.schema.fieldNames():
            raise ViewDefinitionError(
                f"measure '{measure}': {self.kind}({self.column}) names an unknown column; "
                f"source '{source.name}' has {source.schema.fieldNames()}"
            )
        dtype = source.column_type(self.column)
        if self.accepts and not isinstance(dtype, self.accepts):
            kinds = ", ".join(sorted(t.__name__.removesuffix("Type").lower() for t in self.accepts))
            raise ViewDefinitionError(
                f"measure '{measure}': {self.kind}({self.column}) needs a column of type {kinds}, "
                f"but '{self.column}' is {dtype.simpleString()}"
            )


def _col(column: str) -> str:
    return _quote(column)


def count() -> Aggregate:
    """Number of events."""
    return Aggregate("count", None, (State("", "count(1)", "sum({s})", "count"),), "coalesce({0}, 0)")


def sum_of(column: str) -> Aggregate:
    return Aggregate("sum", column, (State("", f"sum({_col(column)})", "sum({s})", "sum"),), "{0}", _NUMERIC)


def min_of(column: str) -> Aggregate:
    return Aggregate("min", column, (State("", f"min({_col(column)})", "min({s})"),), "{0}", _ORDERED)


def max_of(column: str) -> Aggregate:
    return Aggregate("max", column, (State("", f"max({_col(column)})", "max({s})"),), "{0}", _ORDERED)


def avg_of(column: str) -> Aggregate:
    """Mean, kept as a sum and a count so that it merges exactly."""
    c = _col(column)
    return Aggregate(
        "avg",
        column,
        (
            State("__sum", f"sum(cast({c} as double))", "sum({s})", "double"),
            State("__count", f"count({c})", "sum({s})", "count"),
        ),
        "try_divide({0}, {1})",
        _NUMERIC,
    )


def approx_distinct(column: str, lg_k: int = 12) -> Aggregate:
    """Approximate distinct count with Spark's HLL sketches (relative error about 1.04/sqrt(2^lg_k))."""
    if not 4 <= lg_k <= 21:
        raise ViewDefinitionError(f"approx_distinct({column}): lg_k must be within 4..21, got {lg_k}")
    return Aggregate(
        "approx_distinct",
        column,
        (State("__hll", f"hll_sketch_agg({_col(column)}, {lg_k})", "hll_union_agg({s}, false)", "sketch"),),
        "coalesce(hll_sketch_estimate({0}), 0)",
        _HLL_INPUT,
        (("lg_k", lg_k),),
    )


def approx_quantile(column: str, quantile: float, k: int = 200) -> Aggregate:
    """Approximate quantile with Spark's KLL sketches (normalised rank error about 1.65/k)."""
    if not 0.0 <= quantile <= 1.0:
        raise ViewDefinitionError(f"approx_quantile({column}): quantile must be within 0..1, got {quantile}")
    return Aggregate(
        "approx_quantile",
        column,
        (
            State(
                "__kll",
                f"kll_sketch_agg_double(cast({_col(column)} as double), {k})",
                "kll_merge_agg_double({s})",
                "sketch",
            ),
        ),
        f"kll_sketch_get_quantile_double({{0}}, {quantile!r})",
        _NUMERIC,
        (("quantile", quantile), ("k", k)),
    )


_NOT_MERGEABLE = {
    "count_distinct": "use approx_distinct(column): an exact distinct count cannot be merged across layers",
    "median": "use approx_quantile(column, 0.5): an exact median cannot be merged across layers",
    "percentile": "use approx_quantile(column, q)",
    "first": "'first' depends on arrival order, which differs between layers",
    "last": "'last' depends on arrival order, which differs between layers",
    "stddev": "not provided yet; declare sums and counts and derive it in the query",
}


@dataclass(frozen=True)
class View:
    """A view, declared once. Validated against its source when it is created."""

    name: str
    source: EventSource
    keys: tuple[str, ...]
    window: TumblingWindow
    measures: Mapping[str, Aggregate]
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "measures", dict(self.measures))
        where = f"view '{self.name}'"
        if not _IDENTIFIER.match(self.name):
            raise ViewDefinitionError(f"{where}: the name must be an identifier (letters, digits, '_')")
        columns = self.source.schema.fieldNames()
        for key in self.keys:
            if key not in columns:
                raise ViewDefinitionError(
                    f"{where}: key '{key}' is not a column of source '{self.source.name}' {columns}"
                )
        if self.window.column not in columns:
            raise ViewDefinitionError(f"{where}: window column '{self.window.column}' is not in {columns}")
        if not isinstance(self.source.column_type(self.window.column), T.TimestampType):
            raise ViewDefinitionError(f"{where}: window column '{self.window.column}' must be a timestamp")
        if not self.measures:
            raise ViewDefinitionError(f"{where}: declare at least one measure")
        taken = set(self.keys) | _RESERVED
        for measure, aggregate in self.measures.items():
            if not isinstance(aggregate, Aggregate):
                hint = _NOT_MERGEABLE.get(str(aggregate).lower())
                raise ViewDefinitionError(
                    f"{where}: measure '{measure}' is {aggregate!r}, which is not a mergeable aggregate"
                    + (
                        f"; {hint}"
                        if hint
                        else "; use count, sum_of, min_of, max_of, avg_of, approx_distinct or approx_quantile"
                    )
                )
            if not _IDENTIFIER.match(measure):
                raise ViewDefinitionError(f"{where}: measure name {measure!r} must be an identifier")
            aggregate.check(measure, self.source)
            for state in aggregate.states:
                name = aggregate.state_name(measure, state)
                if name in taken:
                    raise ViewDefinitionError(f"{where}: column '{name}' of measure '{measure}' clashes")
                taken.add(name)

    # ---- identity ----------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """A digest of everything that decides the view's states: keys, window, measures and the states they
        compile to, the partial schema, and the source's id column. Serving never merges states of two
        fingerprints; a changed view is recomputed (``lambda-pipeline refresh --view``)."""
        import hashlib
        import json

        definition = {
            "id": self.source.id_column,
            "keys": list(self.keys),
            "window": [self.window.column, duration_seconds(self.window.size)],
            "partial": self.partial_sql(),
            "merge": self.merge_sql(),
            "schema": self.partial_schema(by_tag=False).jsonValue(),
        }
        text = json.dumps(definition, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- compiled forms ---------------------------------------------------------------

    @property
    def reads(self) -> frozenset[str]:
        """The source columns the view's states depend on: a backfill of one of them recomputes the view."""
        measured = {a.column for a in self.measures.values() if a.column is not None}
        return frozenset({self.source.id_column, self.window.column, *self.keys, *measured})

    @property
    def group_columns(self) -> tuple[str, ...]:
        return (*self.keys, WINDOW_START, WINDOW_END)

    def state_columns(self) -> list[tuple[str, State]]:
        return [
            (aggregate.state_name(measure, state), state)
            for measure, aggregate in self.measures.items()
            for state in aggregate.states
        ]

    def partial_sql(self) -> list[str]:
        """``expr AS state`` items, computed over events by both batch and speed."""
        return [f"{state.partial} AS {_quote(name)}" for name, state in self.state_columns()]

    def merge_sql(self) -> list[str]:
        """``final(merge(state)) AS measure`` items, run by serving over unioned states."""
        items = []
        for measure, aggregate in self.measures.items():
            merged = [state.merge.format(s=_quote(aggregate.state_name(measure, state))) for state in aggregate.states]
            items.append(f"{aggregate.final.format(*merged)} AS {_quote(measure)}")
        return items

    def partials(self, events: DataFrame, *, by_tag: bool) -> DataFrame:
        """Mergeable state per key and window (and per ingest tag, for the speed layer)."""
        from pyspark.sql import functions as F

        bucketed = events.select(
            "*",
            F.expr(self.window.start_sql()).alias(WINDOW_START),
            F.expr(self.window.end_sql()).alias(WINDOW_END),
        )
        group = [*self.group_columns, *([INGEST_TAG] if by_tag else [])]
        aggs = [F.expr(item) for item in self.partial_sql()]
        if by_tag:
            aggs.append(F.max(INGESTED_AT).alias(INGESTED_AT_MAX))
        return bucketed.groupBy(*group).agg(*aggs)

    def finalize(self, states: DataFrame) -> DataFrame:
        """Merge any union of partial states into the view users read."""
        from pyspark.sql import functions as F

        return states.groupBy(*self.group_columns).agg(*[F.expr(item) for item in self.merge_sql()])

    def partial_schema(self, *, by_tag: bool) -> T.StructType:
        """The schema :meth:`partials` produces, from the declaration alone: what the batch and speed
        tables are created with, and what serving reads before anything was published."""
        fields = [
            T.StructField(key, self.source.column_type(key), self.source.schema[key].nullable) for key in self.keys
        ]
        fields += [
            T.StructField(WINDOW_START, T.TimestampType(), True),
            T.StructField(WINDOW_END, T.TimestampType(), True),
        ]
        if by_tag:
            fields.append(T.StructField(INGEST_TAG, T.LongType(), False))
        for measure, aggregate in self.measures.items():
            column_type = None if aggregate.column is None else self.source.column_type(aggregate.column)
            for state in aggregate.states:
                dtype, nullable = state_type(state.kind, column_type)
                fields.append(T.StructField(aggregate.state_name(measure, state), dtype, nullable))
        if by_tag:
            fields.append(T.StructField(INGESTED_AT_MAX, T.TimestampType(), True))
        return T.StructType(fields)

    def state_column_names(self) -> tuple[str, ...]:
        """The columns of a partial state, in order: what batch and speed states share."""
        return (*self.group_columns, *(name for name, _ in self.state_columns()))
