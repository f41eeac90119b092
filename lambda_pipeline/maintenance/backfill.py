"""Backfill: fill a field added to the source later, for the events master already holds, from their raw text.

Master keeps each event's line or message as it came in (the ``raw`` column) beside the parsed columns.
When a field is added to the source's schema, ingest adds the column to master and fills it for new events;
past events hold null. :func:`fill_fields` reads the field out of each past event's raw text with the very
parser ingest uses (:func:`lambda_pipeline.ingestion.job.read_fields`) and writes it with one Delta
``UPDATE`` of master. ``lambda-pipeline refresh --backfill FIELD`` runs it, then recomputes the views that read
the field (speed partials, then a batch), so serving answers with the filled values.

What cannot be filled is counted, never guessed: events whose raw text has no value for the field, values
that do not fit the field's type, and events ingested before master kept the raw text.

Why an ``UPDATE`` is safe here: the caller holds ingest's lease, so no other process commits to master (ingest
predicts its next commit's version), and every row keeps its ``ingest_tag``, so coverage is unchanged. Readers
pinned to an older version keep reading its files until VACUUM's retention has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.parsing import read_fields
from lambda_pipeline.core.tables import add_missing_columns, latest_version
from lambda_pipeline.core.views import RAW, EventSource

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

__all__ = ["BackfillReport", "check_fields", "fill_fields"]

USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


@dataclass(frozen=True)
class BackfillReport:
    """Per field: events filled from their raw text, and those left null with why."""

    fields: tuple[str, ...]
    filled: dict[str, int]
    absent: dict[str, int]
    """The raw text holds no value for the field (the event never had it)."""
    unreadable: dict[str, int]
    """The raw text holds a value that does not fit the field's type."""
    without_raw: int
    """Events master holds no raw text for (ingested before it kept it, or with ``ingest.keep_raw`` off)."""
    master_version: int | None
    """The UPDATE's commit, or None when nothing was to fill."""

    def lines(self) -> list[str]:
        out = [
            f"{name}: {self.filled[name]:,} filled, {self.absent[name]:,} without a value, "
            f"{self.unreadable[name]:,} not a {name} value (left null)"
            for name in self.fields
        ]
        if self.without_raw:
            out.append(
                f"{self.without_raw:,} events have no raw text in master (ingested before it kept it, or with "
                "ingest.keep_raw off): left null"
            )
        return out


def check_fields(source: EventSource, fields: list[str]) -> None:
    """Refuse fields the source does not declare, naming the ones it does."""
    declared = source.schema.fieldNames()
    unknown = [name for name in fields if name not in declared]
    if unknown:
        raise LambdaError(
            f"--backfill {', '.join(unknown)}: source '{source.name}' has no such field. Add the field to the "
            f"source's schema first; its fields are: {', '.join(declared)}"
        )


def fill_fields(spark: SparkSession, source: EventSource, master: str, fields: list[str]) -> BackfillReport:
    """Fill ``fields`` of master's past events from their raw text: one UPDATE. The caller holds ingest's lease."""
    from delta.tables import DeltaTable

    check_fields(source, fields)
    add_missing_columns(spark, master, source.master_schema)
    table = DeltaTable.forPath(spark, master)
    parsed = read_fields(F.col(RAW), source, fields)
    has_raw = F.col(RAW).isNotNull()

    def counted(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    aggregates: list[Column] = []
    for name, (text, typed) in parsed.items():
        empty = F.col(name).isNull() & has_raw
        blank = text.isNull() | (F.trim(text) == "")
        aggregates += [
            counted(empty & typed.isNotNull()).alias(f"filled:{name}"),
            counted(empty & blank).alias(f"absent:{name}"),
            counted(empty & ~blank & typed.isNull()).alias(f"unreadable:{name}"),
        ]
    missing_any = F.lit(False)
    for name in fields:
        missing_any = missing_any | F.col(name).isNull()
    aggregates.append(counted(~has_raw & missing_any).alias("without_raw"))
    row = table.toDF().agg(*aggregates).first()
    assert row is not None
    counts = {key: int(value or 0) for key, value in row.asDict().items()}
    filled = {name: counts[f"filled:{name}"] for name in fields}
    version = None
    if any(filled.values()):
        fillable = F.lit(False)
        for name, (_, typed) in parsed.items():
            fillable = fillable | (F.col(name).isNull() & typed.isNotNull())
        values: dict[str, str | Column] = {name: F.coalesce(F.col(name), typed) for name, (_, typed) in parsed.items()}
        spark.conf.set(USER_METADATA, f"lambda-pipeline backfill: {', '.join(fields)}")
        try:
            table.update(condition=has_raw & fillable, set=values)
        finally:
            spark.conf.unset(USER_METADATA)
        version = latest_version(spark, master)
    return BackfillReport(
        tuple(fields),
        filled,
        {name: counts[f"absent:{name}"] for name in fields},
        {name: counts[f"unreadable:{name}"] for name in fields},
        counts["without_raw"],
        version,
    )
