"""Mergeable aggregates: each knows its partial state, how states merge, and the value users read.

Each aggregate knows three SQL fragments:

- ``partial``: its state over a set of events (batch and speed compute these);
- ``merge``: how states of disjoint event sets combine (serving runs these);
- ``final``: the value users read, from the merged state.

Because batch, speed and serving all use the same fragments, no aggregate is ever written per layer, and
``final(merge(partial(A), partial(B))) == final(partial(A ∪ B))`` is a property of the aggregate, tested once.

>>> import lambda_pipeline as lp
>>> measures = {"readings": lp.count(), "p95_temp": lp.approx_quantile("temperature", 0.95)}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import types as T

from lambda_pipeline.core.errors import ViewDefinitionError
from lambda_pipeline.core.events import quote

__all__ = [
    "NOT_MERGEABLE",
    "Aggregate",
    "State",
    "approx_distinct",
    "approx_quantile",
    "avg_of",
    "count",
    "max_of",
    "min_of",
    "state_type",
    "sum_of",
]

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
_ORDERED = (*_NUMERIC, T.StringType, T.DateType, T.TimestampType, T.TimestampNTZType)
_HLL_INPUT = (T.IntegerType, T.LongType, T.StringType, T.BinaryType)


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
    """A mergeable aggregate. Build one with :func:`count`, :func:`sum_of`, ... rather than directly."""

    kind: str
    column: str | None
    states: tuple[State, ...]
    final: str
    """SQL over the merged states: ``{0}``, ``{1}``... in the order of ``states``."""
    accepts: tuple[type, ...] = ()
    params: tuple[tuple[str, object], ...] = field(default=())

    def state_name(self, measure: str, state: State) -> str:
        return f"{measure}{state.suffix}"

    def check_input(self, measure: str, dtype: T.DataType, where: str = "") -> None:
        """Refuse an input column of a type this aggregate cannot take, naming both (and ``where``: the view)."""
        if self.accepts and not isinstance(dtype, self.accepts):
            kinds = ", ".join(sorted(t.__name__.removesuffix("Type").lower() for t in self.accepts))
            raise ViewDefinitionError(
                f"{where + ': ' if where else ''}measure '{measure}': {self.kind}({self.column}) needs a column "
                f"of type {kinds}, but '{self.column}' is {dtype.simpleString()}"
            )


def _col(column: str) -> str:
    return quote(column)


def count() -> Aggregate:
    """Number of events (rows the view's filter keeps).

    >>> measures = {"events": count()}
    """
    return Aggregate("count", None, (State("", "count(1)", "sum({s})", "count"),), "coalesce({0}, 0)")


def sum_of(column: str) -> Aggregate:
    """Sum of a numeric column; nulls are skipped, and a group of nulls only sums to null.

    >>> measures = {"total_cents": sum_of("cents")}
    """
    return Aggregate("sum", column, (State("", f"sum({_col(column)})", "sum({s})", "sum"),), "{0}", _NUMERIC)


def min_of(column: str) -> Aggregate:
    """Smallest value of a numeric, string, date or timestamp column.

    >>> measures = {"first_seen": min_of("ts")}
    """
    return Aggregate("min", column, (State("", f"min({_col(column)})", "min({s})"),), "{0}", _ORDERED)


def max_of(column: str) -> Aggregate:
    """Largest value of a numeric, string, date or timestamp column.

    >>> measures = {"hottest": max_of("temperature")}
    """
    return Aggregate("max", column, (State("", f"max({_col(column)})", "max({s})"),), "{0}", _ORDERED)


def avg_of(column: str) -> Aggregate:
    """Mean of a numeric column, kept as a sum and a count so that it merges exactly.

    >>> measures = {"avg_amount": avg_of("amount")}
    """
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
    """Approximate distinct count with Spark's HLL sketches (relative error about 1.04/sqrt(2^lg_k)).

    >>> measures = {"users": approx_distinct("user_id")}
    """
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
    """Approximate quantile with Spark's KLL sketches (normalised rank error about 1.65/k).

    >>> measures = {"p95_temperature": approx_quantile("temperature", 0.95)}
    """
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


NOT_MERGEABLE = {
    "count_distinct": "use approx_distinct(column): an exact distinct count cannot be merged across layers",
    "median": "use approx_quantile(column, 0.5): an exact median cannot be merged across layers",
    "percentile": "use approx_quantile(column, q)",
    "first": "'first' depends on arrival order, which differs between layers",
    "last": "'last' depends on arrival order, which differs between layers",
    "stddev": "not provided yet; declare sums and counts and derive it in the query",
}
