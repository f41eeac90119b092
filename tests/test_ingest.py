"""Bad input ends up in quarantine with a reason; nothing is lost; each event lands once."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

from chispa import assert_df_equality
from pyspark.sql import types as T

from lambda_pipeline.core.tables import latest_version
from lambda_pipeline.ingestion.routing import parse_events
from lambda_pipeline.pipelines.clickstream import CLICKS, CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest

GOOD = {"event_id": "e1", "user_id": "u1", "page": "/a", "event_time": "2026-01-01T10:00:00Z", "duration_ms": 5}


def line(**changes) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


def test_parse_events_types_and_reasons(spark) -> None:
    raws = [
        line(),
        "{not json",
        "[1, 2]",
        "",
        line(duration_ms="abc"),
        line(user_id=...),
        line(event_time="yesterday"),
        line(page=""),
        line(event_id=None),
        line(extra_field={"nested": True}),
    ]
    lines = spark.createDataFrame([(r, "f.jsonl") for r in raws], "raw string, source_file string")
    got = parse_events(lines, CLICKS).select("raw", "event_id", "duration_ms", "reason")
    expected = spark.createDataFrame(
        [
            (raws[0], "e1", 5, None),
            (raws[1], None, None, "malformed_json: not a JSON object"),
            (raws[2], None, None, "malformed_json: not a JSON object"),
            (raws[3], None, None, "empty_line"),
            (raws[4], "e1", None, "wrong_type: duration_ms expected bigint, got abc"),
            (raws[5], "e1", 5, "missing_field: user_id"),
            (raws[6], "e1", 5, "wrong_type: event_time expected timestamp, got yesterday"),
            (raws[7], "e1", 5, "missing_field: page"),
            (raws[8], None, 5, "missing_field: event_id"),
            (raws[9], "e1", 5, None),  # additive drift: an unknown field is ignored
        ],
        T.StructType(
            [
                T.StructField("raw", T.StringType()),
                T.StructField("event_id", T.StringType()),
                T.StructField("duration_ms", T.LongType()),
                T.StructField("reason", T.StringType()),
            ]
        ),
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    typed = parse_events(lines, CLICKS).filter("reason IS NULL").select("event_time").first()
    assert typed.event_time == datetime(2026, 1, 1, 10, 0, 0)


def test_every_line_reconciles_and_tags_are_commit_versions(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(11, duplicate_fraction=0.1, malformed_fraction=0.1)
    first = generator.write(locations.landing, 300, files=3)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    second = generator.write(locations.landing, 200, files=2)  # its duplicates repeat earlier files' events
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()

    files = [*first, *second]
    master = spark.read.format("delta").load(locations.master)
    quarantine = spark.read.format("delta").load(locations.quarantine)
    assert sum(f.lines for f in files) == master.count() + quarantine.count()
    # Each generated event exactly once in master, and nothing else.
    expected_ids = {i for f in files for i in f.event_ids}
    ids = [r.event_id for r in master.select("event_id").collect()]
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids
    by_kind = Counter(r.reason.split(":")[0] for r in quarantine.select("reason").collect())
    assert by_kind["duplicate"] == sum(f.duplicates for f in files)
    malformed = sum((f.malformed for f in files), start=Counter())
    assert by_kind["malformed_json"] == malformed["truncated_json"] + malformed["not_an_object"]
    assert by_kind["wrong_type"] == malformed["wrong_type"] + malformed["bad_time"]
    assert by_kind["missing_field"] == malformed["missing_field"]
    assert by_kind["empty_line"] == malformed["empty_line"]
    # Each ingest run made one master commit, and its rows carry that commit's version.
    tags = sorted(r.ingest_tag for r in master.select("ingest_tag").distinct().collect())
    assert tags == [1, 2] and latest_version(spark, locations.master) == 2
    quarantined_files = {
        r.source_file.rsplit("/", 1)[-1] for r in quarantine.select("source_file").distinct().collect()
    }
    assert quarantined_files <= {f.path.name for f in files}


def test_each_line_is_read_and_parsed_once(spark, settings, locations, capsys) -> None:
    """One scan of the source and one shuffle feed both the dedup and the lines it judges."""
    ClickstreamGenerator(12, duplicate_fraction=0.2).write(locations.landing, 50, files=1)
    query = start_ingest(spark, CLICKSTREAM, settings, locations, once=True)
    query.awaitTermination()
    capsys.readouterr()
    query.explain()
    plan = capsys.readouterr().out
    assert plan.count("FileScan text") == 1, plan
    assert plan.count("from_json(") == 1, plan
    assert plan.count("Exchange hashpartitioning") == 1, plan  # the one shuffle, into the dedup
    assert "TransformWithState" in plan and "StreamingDeduplicateWithinWatermark" not in plan, plan


def test_the_dedup_marks_one_first_copy_per_new_valid_key_in_a_fixed_order(spark) -> None:
    from lambda_pipeline.core.jvm import first_copies
    from lambda_pipeline.ingestion.routing import DEDUP_KEY, DEDUP_ORDER, FIRST_COPY, VALID_KEY_PREFIX

    rows = [  # (key, source_file, raw): three copies of v1 across two files, one of v2, two invalid lines alike
        ("v1", "b.jsonl", "{1 late}"),
        ("v1", "a.jsonl", "{1 second}"),
        ("v1", "a.jsonl", "{1 first}"),
        ("v2", "a.jsonl", "{2}"),
        ("x9", "a.jsonl", "bad"),
        ("x9", "a.jsonl", "bad"),
    ]
    frame = spark.createDataFrame(rows, f"{DEDUP_KEY} string, source_file string, raw string").repartition(3)
    marked = first_copies(frame, DEDUP_KEY, VALID_KEY_PREFIX, DEDUP_ORDER, FIRST_COPY, 60_000)
    got = sorted((r[DEDUP_KEY], r["source_file"], r["raw"], r[FIRST_COPY]) for r in marked.collect())
    assert got == sorted(
        [
            ("v1", "a.jsonl", "{1 first}", True),
            ("v1", "a.jsonl", "{1 second}", False),
            ("v1", "b.jsonl", "{1 late}", False),
            ("v2", "a.jsonl", "{2}", True),
            ("x9", "a.jsonl", "bad", False),  # invalid lines: never a first copy, and no state
            ("x9", "a.jsonl", "bad", False),
        ]
    )


def test_a_checkpoint_of_the_earlier_dedup_resumes_with_it_exactly(
    spark, settings, locations, monkeypatch, capsys
) -> None:
    """A work directory an earlier release started (Spark's dropDuplicatesWithinWatermark) keeps its dedup state:
    the job detects it from the checkpoint and resumes with the same operator, so repeats are still caught."""
    from lambda_pipeline.ingestion import job

    (first,) = ClickstreamGenerator(21).write(locations.landing, 60, files=1)
    text, ids = Path(first.path).read_text(), set(first.event_ids)  # before ingest archives the file
    with monkeypatch.context() as patched:  # what an earlier release started
        patched.setattr(job, "dedup_of", lambda spark, checkpoint: "watermark")
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    assert job.dedup_of(spark, locations.checkpoint("ingest")) == "watermark"
    (Path(locations.landing) / "repeat.jsonl").write_text(text)  # every line of the first file again
    capsys.readouterr()
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    assert "holds the dedup state of an earlier release" in capsys.readouterr().err
    master = spark.read.format("delta").load(locations.master)
    assert master.count() == len(ids) == master.select("event_id").distinct().count()
    quarantine = spark.read.format("delta").load(locations.quarantine)
    assert quarantine.filter("reason LIKE 'duplicate:%'").count() >= len(ids)
