"""A view's SQL expressions (derived columns and its filter): what they read, and whether they are sound.

A derived column or a filter must give the same answer in every layer, on every replay and on every machine.
Two checks see to it: a pure one when the view is declared (the names of functions that read a clock or draw
random values), and Spark's analysis when a job starts (unknown columns, types, and any expression Spark
itself marks non-deterministic). The session settings expressions depend on are pinned by the session
factory (:data:`PINNED_SESSION`) and recorded in the fingerprint of every view that has expressions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyspark.sql import types as T

from lambda_pipeline.core.errors import ViewDefinitionError
from lambda_pipeline.core.pinned import PINNED_SESSION

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["PINNED_SESSION", "derive", "impure_call", "referenced", "resolve_types"]


_CLOCK_OR_CHANCE = {
    "rand": "draws a random number",
    "randn": "draws a random number",
    "random": "draws a random number",
    "uuid": "draws a random id",
    "shuffle": "shuffles at random",
    "current_timestamp": "reads the clock",
    "current_date": "reads the clock",
    "current_time": "reads the clock",
    "localtimestamp": "reads the clock",
    "now": "reads the clock",
    "curdate": "reads the clock",
    "current_timezone": "reads the session",
    "unix_timestamp": "reads the clock when called without an argument",
    "monotonically_increasing_id": "depends on how rows are partitioned",
    "spark_partition_id": "depends on how rows are partitioned",
    "input_file_name": "depends on the files a layer reads",
    "reflect": "calls arbitrary Java code",
    "java_method": "calls arbitrary Java code",
    "try_reflect": "calls arbitrary Java code",
}
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*(\()?")
_KEYWORD_CLOCKS = {"current_timestamp", "current_date", "current_time", "localtimestamp"}
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
# Spark's classes that read the clock yet count as deterministic (the optimizer folds them per query).
_CLOCK_CLASSES = {"CurrentTimestamp", "CurrentDate", "CurrentTime", "LocalTimestamp", "Now", "CurrentTimeZone"}


def _code(expression: str) -> str:
    """``expression`` without its string literals, so that a literal's words are not taken for names."""
    return _STRING.sub("''", expression)


def impure_call(expression: str) -> str | None:
    """Why ``expression`` cannot give the same answer in every layer (a call that reads a clock or draws at
    random), or None. Pure: it runs when a view is declared, before any session exists."""
    for match in _CALL.finditer(_code(expression)):
        name, call = match.group(1).lower(), match.group(2)
        if name not in _CLOCK_OR_CHANCE or not (call or name in _KEYWORD_CLOCKS):
            continue
        if name == "unix_timestamp" and re.match(r"\s*\)", _code(expression)[match.end() :]) is None:
            continue  # unix_timestamp(column) converts; only unix_timestamp() reads the clock
        return f"{name}() {_CLOCK_OR_CHANCE[name]}, so it would differ between the batch and speed layers"
    return None


def referenced(expression: str, names: set[str]) -> set[str]:
    """The ``names`` an expression mentions (a superset of what it reads: a word that is also a name counts)."""
    words = {m.group(1) for m in _CALL.finditer(_code(expression))}
    words |= {w.strip("`") for w in re.findall(r"`[^`]+`", expression)}
    return words & names


def derive(events: DataFrame, columns: Mapping[str, str]) -> DataFrame:
    """``events`` with the derived ``columns``, in declaration order (a later one may use an earlier one)."""
    from pyspark.sql import functions as F

    for name, expression in columns.items():
        events = events.withColumn(name, F.expr(expression))
    return events


def _analysed(what: str, frame: DataFrame, text: str, name: str | None) -> DataFrame:
    """``frame`` with ``text`` as column ``name`` (or alone, as a filter), or why Spark cannot analyse it."""
    from pyspark.errors import AnalysisException, ParseException
    from pyspark.sql import functions as F

    from lambda_pipeline.core.jvm import expression_nodes

    try:
        column = F.expr(text)
        probe = frame.withColumn(name, column) if name else frame.select(column.alias("_where"))
    except (AnalysisException, ParseException) as exc:
        raise ViewDefinitionError(f"{what}: {str(exc).strip().splitlines()[0]}") from None
    # Parents come before their children: the last one found is the call itself, not an alias around it.
    impure = [name for kind, name, pure in expression_nodes(probe) if (not pure or kind in _CLOCK_CLASSES)]
    if impure:
        raise ViewDefinitionError(
            f"{what}: {impure[-1]}() gives a different answer on each run, so the batch and speed layers "
            "would disagree; derive columns only from the event's own fields"
        )
    return probe


def resolve_types(
    spark: SparkSession, where: str, schema: T.StructType, columns: Mapping[str, str], condition: str | None
) -> dict[str, T.DataType]:
    """The type of each derived column, from Spark's analysis over an empty frame of the source's schema.

    Refuses, naming the expression: an unknown column or function, a type error, a filter that is not a
    boolean, and anything Spark marks non-deterministic or that reads the clock.
    """

    frame = spark.createDataFrame([], schema)
    types: dict[str, T.DataType] = {}
    for name, text in columns.items():
        frame = _analysed(f"{where}: column {name!r} = {text!r}", frame, text, name)
        types[name] = frame.schema[name].dataType
    if condition is not None:
        what = f"{where}: where={condition!r}"
        probe = _analysed(what, frame, condition, None)
        dtype = probe.schema.fields[0].dataType
        if not isinstance(dtype, T.BooleanType):
            raise ViewDefinitionError(f"{what}: a filter must be a boolean, this is {dtype.simpleString()}")
    return types
