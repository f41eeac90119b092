"""Running a statement the guard accepted, at one pin: a DataFrame, and never a Spark command.

Queries, EXPLAIN and DESCRIBE QUERY run on the statement's plan bound to the pinned relations; DESCRIBE,
SHOW COLUMNS, SHOW TABLES and SHOW DATABASES are answered from the pipeline's names and the pinned schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyspark.sql import types as T

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import analyzed_plan, dataset_of_plan, frame_of_dataset
from lambda_pipeline.serving_layer.binding import bind, check_resolved
from lambda_pipeline.serving_layer.guard import LAYERS, Statement
from lambda_pipeline.serving_layer.pin import Pin

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["execute"]

_TEXT = T.StringType()

Relation = Callable[[str, str], "DataFrame"]
"""The pinned DataFrame behind ``<layer>.<name>``."""


def execute(
    session: SparkSession, statement: Statement, pin: Pin, relation: Relation, names: frozenset[tuple[str, str]]
) -> DataFrame:
    """The answer to ``statement`` at ``pin`` (lazily), its names read through ``relation``."""
    kind = statement.kind
    if kind in {"query", "explain", "describe_query"}:
        dataset = _bound(session, statement, relation)
        if kind == "query":
            return frame_of_dataset(session, dataset)
        if kind == "explain":
            text = dataset.queryExecution().explainString(statement.explain_mode)
            return _rows(session, [(text,)], ["plan"])
        return _describe(session, _schema(dataset))
    if kind in {"describe", "describe_column", "show_columns"}:
        assert statement.relation is not None
        schema = relation(*statement.relation).schema
        if kind == "show_columns":
            return _rows(session, [(f.name,) for f in schema.fields], ["col_name"])
        if kind == "describe_column":
            wanted = (statement.column or "").lower()
            field = next((f for f in schema.fields if f.name.lower() == wanted), None)
            if field is None:
                raise LambdaError(f"{'.'.join(statement.relation)} has no column '{statement.column}'")
            info = [("col_name", field.name), ("data_type", field.dataType.simpleString()), ("comment", None)]
            return _rows(session, info, ["info_name", "info_value"])
        described = _describe(session, schema)
        if not statement.extended:
            return described
        extra = [("", "", None), ("# Pinned versions", "", None)]
        extra += [(key, str(value), None) for key, value in pin.as_dict().items()]
        return described.unionByName(_rows(session, extra, ["col_name", "data_type", "comment"]))
    if kind == "show_tables":
        shown = sorted(n for n in names if statement.namespace in (None, n[0]))
        rows = [(layer, name, False) for layer, name in shown if _matches(statement.pattern, name)]
        schema = T.StructType(
            [
                T.StructField("namespace", _TEXT),
                T.StructField("tableName", _TEXT),
                T.StructField("isTemporary", T.BooleanType()),
            ]
        )
        return session.createDataFrame(rows, schema)
    layers = [(layer,) for layer in LAYERS if _matches(statement.pattern, layer)]
    return _rows(session, layers, ["namespace"])


def _bound(session: SparkSession, statement: Statement, relation: Relation) -> Any:
    """The statement's plan bound to the pinned relations, analysed, and checked once resolved."""
    relations = {name: relation(*name) for name in statement.reads}
    plans = {name: analyzed_plan(frame) for name, frame in relations.items()}
    bound = bind(session, statement.plan, plans)
    dataset = dataset_of_plan(session, bound)
    check_resolved(statement.sql, dataset.queryExecution().analyzed(), list(plans.values()))
    return dataset


def _rows(session: SparkSession, rows: list[tuple[Any, ...]], columns: list[str]) -> DataFrame:
    return session.createDataFrame(rows, T.StructType([T.StructField(c, _TEXT) for c in columns]))


def _describe(session: SparkSession, schema: T.StructType) -> DataFrame:
    rows = [(f.name, f.dataType.simpleString(), None) for f in schema.fields]
    return _rows(session, rows, ["col_name", "data_type", "comment"])


def _schema(dataset: Any) -> T.StructType:
    return T.StructType.fromJson(json.loads(dataset.schema().json()))


def _matches(pattern: str | None, name: str) -> bool:
    """Spark's SHOW ... LIKE pattern: ``*`` is any text, ``|`` separates alternatives, case-insensitive."""
    if pattern is None:
        return True
    for alternative in pattern.split("|"):
        try:
            if re.fullmatch(alternative.strip().replace("*", ".*"), name, re.IGNORECASE):
                return True
        except re.error:
            continue
    return False
