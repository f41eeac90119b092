"""Expected answers computed independently of the serving layer, straight from master."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from lambda_pipeline.batch_layer.job import deduplicate
from lambda_pipeline.pipelines.clickstream import CLICKS, PAGE_ACTIVITY

EXACT_MEASURES = ("events", "total_duration_ms", "max_duration_ms")


def recompute(spark: SparkSession, master_path: str, tag_filter: str = "true") -> dict:
    """page_activity over the master events selected by ``tag_filter``, as {(page, window): row}."""
    events = spark.read.format("delta").load(master_path).filter(tag_filter)
    frame = PAGE_ACTIVITY.finalize(PAGE_ACTIVITY.partials(deduplicate(events, CLICKS), by_tag=False))
    return by_key(frame)


def by_key(frame: DataFrame) -> dict:
    return {(r.page, r.window_start): r.asDict() for r in frame.collect()}


def assert_same_view(got: dict, expected: dict, *, users_tolerance: float) -> None:
    assert got.keys() == expected.keys(), (sorted(set(got) ^ set(expected)))[:5]
    for key, row in expected.items():
        for measure in EXACT_MEASURES:
            assert got[key][measure] == row[measure], (key, measure, got[key][measure], row[measure])
        assert abs(got[key]["unique_users"] - row["unique_users"]) <= users_tolerance * max(1, row["unique_users"]), key
