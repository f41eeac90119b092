"""The master dataset and the quarantine as ingest writes them: once per micro-batch, each event tagged.

Each micro-batch of valid events becomes one commit of the append-only master table, and every event in it
carries that commit's version as its ``ingest_tag``: the unit in which the batch layer states its coverage.
Only ingest writes master, so the version of its next commit is known before writing. The lines that are
not events go to quarantine with their raw text, origin and reason, in a commit beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.literals import with_constant
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import OnceAppender
from lambda_pipeline.core.tables import (
    QUARANTINE_SCHEMA,
    add_missing_columns,
    ensure_table,
    latest_version,
    set_table_properties,
)
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT, RAW, SOURCE_FILE, EventSource
from lambda_pipeline.ingestion.routing import REASON

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["MasterWriter", "quarantine_rows", "setup_master_tables"]


def setup_master_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    """Master and quarantine, created if absent, with the log properties of ``maintenance`` (set on tables made
    without them too, before ingest predicts any version); a field added to the source becomes a column of master."""
    log = locations.settings.maintenance.log_properties()
    ensure_table(spark, locations.master, pipeline.source.master_schema, properties=log)
    set_table_properties(spark, locations.master, log)
    # From now on; ``refresh --backfill`` fills the past.
    add_missing_columns(spark, locations.master, pipeline.source.master_schema)
    ensure_table(spark, locations.quarantine, QUARANTINE_SCHEMA, properties=log)
    set_table_properties(spark, locations.quarantine, log)


def quarantine_rows(routed: DataFrame, batch_id: int) -> DataFrame:
    """The quarantine table's rows of a routed micro-batch: every line with a reason."""
    lines = routed.filter(F.col(REASON).isNotNull()).select(RAW, SOURCE_FILE, REASON, INGESTED_AT)
    rows = with_constant(lines, "ingest_batch", batch_id).withColumnRenamed(INGESTED_AT, "quarantined_at")
    return rows.select(*QUARANTINE_SCHEMA.fieldNames())


@dataclass
class MasterWriter:
    """Appends a micro-batch's valid events to master once, tagged with the version of that very commit."""

    spark: SparkSession
    source: EventSource
    locations: Locations
    appender: OnceAppender
    keep_raw: bool = True
    """Whether master keeps each event's raw text (``ingest.keep_raw``): what a backfill reads."""

    def append(self, events: DataFrame, batch_id: int) -> tuple[int, bool]:
        """Append the micro-batch's events to master once: (their ingest tag, whether this call wrote them)."""
        before = latest_version(self.spark, self.locations.master)
        tagged = with_constant(events, INGEST_TAG, before + 1)
        if not self.keep_raw:
            tagged = tagged.withColumn(RAW, F.lit(None).cast("string"))
        path = self.locations.master
        if not self.appender.append(self.spark, tagged.select(*self.source.master_schema.fieldNames()), path, batch_id):
            version = self.appender.version_of(self.spark, path, batch_id)
            if version is None:
                raise LambdaError(
                    f"ingest micro-batch {batch_id} is marked as written to {path}, but no commit among the newest "
                    "holds it; the table's log was cleaned up under a running ingest. Restart ingest."
                )
            return version, False
        after = latest_version(self.spark, path)
        if after != before + 1:
            raise LambdaError(
                f"master table {path} moved from version {before} to {after} during one "
                "ingest commit: another process writes it. Only the ingest job may write the master "
                "dataset; stop the other writer and restart ingest (its checkpoint makes this safe)."
            )
        return before + 1, True

    def rows_of(self, tag: int) -> DataFrame:
        """What master holds for ``tag``: a replayed micro-batch's events, as its first attempt wrote them."""
        master = self.spark.read.format("delta").load(self.locations.master)
        return master.filter(F.col(INGEST_TAG) == tag)

    def quarantine(self, routed: DataFrame, batch_id: int) -> None:
        self.appender.append(self.spark, quarantine_rows(routed, batch_id), self.locations.quarantine, batch_id)
