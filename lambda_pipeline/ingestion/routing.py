"""Routing one ingest micro-batch, as pure DataFrame transformations: parse, judge, deduplicate.

Nothing here reads or writes a table: each function takes a DataFrame and returns one, so each is tested on
plain DataFrames, and the ingest job (:mod:`.job`) applies them inside its stream. A line that does not
parse, does not fit the schema, or repeats an ``event_id`` seen within the dedup horizon gets a ``reason``;
a valid line has none and goes to master.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lambda_pipeline.core.config import EventTimePolicy
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.parsing import CORRUPT, field_value, text_schema
from lambda_pipeline.core.views import RAW, SOURCE_FILE, EventSource
from lambda_pipeline.ingestion.sources import PRE_REASON

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = [
    "BRANCH",
    "DEDUP_KEY",
    "DEDUP_ORDER",
    "FIRST_COPY",
    "REASON",
    "VALID_KEY_PREFIX",
    "dedup_key",
    "parse_events",
    "route_batch",
]

REASON = "reason"
BRANCH = "_branch"
DEDUP_KEY = "_dedup_key"
FIRST_COPY = "_first_copy"
"""The dedup's verdict on a line (``core/jvm.py`` :func:`first_copies`): the first copy of its key in the horizon."""
VALID_KEY_PREFIX = "v"
DEDUP_ORDER = (SOURCE_FILE, RAW)
"""How the copies of a key within one micro-batch are ordered, so that a replay marks the same one first."""
_RAW_EXCERPT = 60


def _event_time_check(source: EventSource, policy: EventTimePolicy, now: Column) -> Column:
    """Reason for an event time outside the plausible range, else null.

    ``now`` is the micro-batch's timestamp, kept in the offset log, so a replayed
    micro-batch judges every event the same way.
    """
    column = F.col(source.time_column)
    latest = now + F.expr(f"INTERVAL {duration_seconds(policy.max_future)} SECONDS")
    earliest = F.to_timestamp(F.lit(policy.earliest))
    return F.when(
        (column > latest) | (column < earliest),
        F.concat(
            F.lit(f"event_time_out_of_range: {source.time_column} "),
            F.date_format(column, "yyyy-MM-dd'T'HH:mm:ss'Z'"),
            F.lit(f" is before {policy.earliest} or more than {policy.max_future} ahead of ingestion"),
        ),
    )


def parse_events(
    lines: DataFrame, source: EventSource, policy: EventTimePolicy | None = None, now: Column | None = None
) -> DataFrame:
    """Parse ``raw`` JSON lines into the source's typed columns plus a ``reason`` (null when valid).

    Pure: usable on a batch DataFrame in tests and inside the ingest stream. Every
    field is first read as text, so a wrong type is reported as such instead of
    silently becoming null. A ``_pre_reason`` column (a message the source could not
    even decode) wins over every other reason. Fields the schema does not know
    (additive schema drift) are ignored: the event is accepted with its known fields.
    """
    policy = policy or EventTimePolicy()
    now = F.current_timestamp() if now is None else now
    if PRE_REASON not in lines.columns:
        lines = lines.withColumn(PRE_REASON, F.lit(None).cast("string"))
    schema = text_schema(list(source.schema.fields))
    json = F.from_json(F.col(RAW), schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    # Behind a generator, the optimizer cannot inline from_json into every field reference of a
    # filter pushed down from above (which made each line parse about twenty times).
    parsed = lines.select("*", F.explode(F.array(json)).alias("_j"))
    typed = [field_value(source, f, F.col(f"_j.{f.name}")).alias(f.name) for f in source.schema.fields]
    checks = [
        F.col(PRE_REASON),
        F.when(F.trim(F.col(RAW)) == "", F.lit("empty_line")),
        F.when(
            F.col("_j").isNull() | F.col(f"_j.{CORRUPT}").isNotNull(),
            F.lit("malformed_json: not a JSON object"),
        ),
    ]
    for field in source.schema.fields:
        raw = F.col(f"_j.{field.name}")
        if field.name in source.required:
            blank = raw.isNull() | (F.trim(raw) == "")
            checks.append(F.when(blank, F.lit(f"missing_field: {field.name}")))
        checks.append(
            F.when(
                raw.isNotNull() & (F.trim(raw) != "") & field_value(source, field, raw).isNull(),
                F.concat(
                    F.lit(f"wrong_type: {field.name} expected {_expected(source, field)}, got "),
                    F.substring(raw, 1, _RAW_EXCERPT),
                ),
            )
        )
    # Last: only a line that is otherwise valid has an event time to judge.
    with_fields = parsed.select(RAW, SOURCE_FILE, *typed, F.coalesce(*checks).alias(REASON))
    return with_fields.withColumn(
        REASON, F.coalesce(F.col(REASON), _event_time_check(source, policy, now).cast("string"))
    )


def _expected(source: EventSource, field: T.StructField) -> str:
    if field.name == source.time_column and source.time_format != "iso8601":
        unit = "milliseconds" if source.time_format == "epoch_millis" else "seconds"
        return f"timestamp as a number of {unit} since the epoch"
    return field.dataType.simpleString()


def dedup_key(source: EventSource) -> Column:
    """What the stateful dedup compares: ``v<event id>`` for a valid line, ``x<hash of the line>`` otherwise.

    Every line goes through the dedup (a filter in front of it would be pushed below the shared shuffle
    and split it in two); the prefixes keep an invalid line from ever matching a valid id.
    """
    valid = F.concat(F.lit(VALID_KEY_PREFIX), F.col(source.id_column))
    invalid = F.concat(F.lit("x"), F.xxhash64(F.col(SOURCE_FILE), F.col(RAW)).cast("string"))
    return F.when(F.col(REASON).isNull(), valid).otherwise(invalid)


def route_batch(batch: DataFrame, source: EventSource) -> DataFrame:
    """Route one ingest micro-batch: ``reason`` null for master, else why it goes to quarantine.

    ``batch`` holds every parsed line, each marked by the dedup (:data:`FIRST_COPY`): the first copy of a valid
    id not seen within the horizon goes to master, every other copy is a duplicate. The dedup orders the copies
    of a key within a micro-batch (:data:`DEDUP_ORDER`), so a replayed micro-batch routes every line the same way.

    On a checkpoint of an earlier release the dedup is Spark's ``dropDuplicatesWithinWatermark``: ``batch`` then
    holds every line (branch ``all``) and the first-seen lines again (branch ``first``), both partitioned by the
    dedup key, and one window over each key finds the verdict and numbers the copies.
    """
    if FIRST_COPY in batch.columns:  # the dedup marked each line itself: no window, no second shuffle
        duplicate = F.col(REASON).isNull() & ~F.col(FIRST_COPY)
        return batch.withColumn(REASON, F.when(duplicate, F.lit(_duplicate(source))).otherwise(F.col(REASON))).drop(
            FIRST_COPY, DEDUP_KEY
        )
    # A checkpoint of an earlier release (Spark's dropDuplicatesWithinWatermark): the dedup emits the first
    # copies as a second branch. One window over each key's rows, no self-join: Spark recomputes the
    # micro-batch for each scan of it.
    # The dedup's row (branch "first") sorts after the key's lines, so numbering the lines is unaffected.
    ordered = Window.partitionBy(DEDUP_KEY).orderBy(
        F.col(BRANCH) == "first", F.col(REASON).isNotNull(), SOURCE_FILE, RAW
    )
    whole_key = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    first_seen = F.max(((F.col(BRANCH) == "first") & F.col(REASON).isNull()).cast("int")).over(whole_key)
    numbered = (
        batch.withColumn("_copy", F.row_number().over(ordered))
        .withColumn("_first", first_seen == 1)
        .filter(F.col(BRANCH) == "all")
        .drop(BRANCH)
    )
    duplicate = F.col(REASON).isNull() & ~(F.col("_first") & (F.col("_copy") == 1))
    return numbered.withColumn(
        REASON,
        F.when(duplicate, F.lit(_duplicate(source))).otherwise(F.col(REASON)),
    ).drop("_copy", "_first", DEDUP_KEY)


def _duplicate(source: EventSource) -> str:
    return f"duplicate: {source.id_column} already ingested within the dedup horizon"
