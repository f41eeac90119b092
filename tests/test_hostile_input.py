"""Kafka messages are bytes: each hostile kind gets a documented verdict before or during parsing."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

from pyspark.sql import functions as F

from lambda_pipeline.core.config import EventTimePolicy
from lambda_pipeline.ingestion.routing import parse_events
from lambda_pipeline.ingestion.sources import decode_messages
from lambda_pipeline.pipelines.clickstream import CLICKS
from lambda_pipeline.pipelines.generator import HOSTILE_KINDS, ClickstreamGenerator

KAFKA_SCHEMA = "value binary, topic string, partition int, offset long"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _good(**changes) -> bytes:
    record = {
        "event_id": "e1",
        "user_id": "u1",
        "page": "/a",
        "event_time": _now().isoformat().replace("+00:00", "Z"),
        "duration_ms": 5,
        **changes,
    }
    return json.dumps(record).encode()


def test_decode_messages_flags_bytes_that_cannot_be_text(spark) -> None:
    bad_utf8 = b'{"event_id": "\xff\xfe"}'
    good = _good()
    rows = [
        (good, "t", 0, 0),
        (None, "t", 0, 1),
        (bad_utf8, "t", 1, 7),
        (_good(padding="x" * 200), "t", 1, 8),
    ]
    got = decode_messages(spark.createDataFrame(rows, KAFKA_SCHEMA), max_message_bytes=150).collect()
    assert [r.source_file for r in got] == ["kafka://t/0/0", "kafka://t/0/1", "kafka://t/1/7", "kafka://t/1/8"]
    assert got[0]._pre_reason is None and got[0].raw == good.decode()
    assert got[1]._pre_reason.startswith("empty_message") and got[1].raw == ""
    assert got[2]._pre_reason.startswith("invalid_utf8")
    assert base64.b64decode(got[2].raw.removeprefix("base64:")) == bad_utf8  # nothing is lost
    assert got[3]._pre_reason.startswith("oversize: ") and got[3].raw.endswith('"}')  # kept whole


def test_event_time_policy_quarantines_implausible_times(spark) -> None:
    now = _now()
    raws = [
        _good(),
        _good(event_time=(now - timedelta(days=30)).isoformat()),  # late but plausible: accepted
        _good(event_time=(now + timedelta(days=400)).isoformat()),
        _good(event_time="1969-07-20T20:17:40Z"),
        _good(event_time=(now + timedelta(minutes=30)).isoformat()),  # clock skew within max_future
    ]
    lines = spark.createDataFrame([(r.decode(), "f") for r in raws], "raw string, source_file string")
    policy = EventTimePolicy(max_future="1 hour", earliest="2000-01-01T00:00:00Z")
    reasons = [r.reason for r in parse_events(lines, CLICKS, policy).collect()]
    assert reasons[0] is None and reasons[1] is None and reasons[4] is None
    assert reasons[2].startswith("event_time_out_of_range") and reasons[3].startswith("event_time_out_of_range")


def test_every_hostile_kind_gets_its_documented_reason(spark) -> None:
    """Each kind of the generator alone through decode + parse: the verdict HOSTILE_KINDS documents."""
    gen = ClickstreamGenerator(3)
    gen.lines(5)  # fills the recent ids that duplicate_id repeats
    now = datetime.now(timezone.utc)
    rows = []
    for i, kind in enumerate(sorted(HOSTILE_KINDS)):
        value, _ = gen.hostile_message(kind, now)
        rows.append((value, kind, 0, i))
    decoded = decode_messages(spark.createDataFrame(rows, KAFKA_SCHEMA), 65_536).withColumn(
        "kind", F.regexp_extract("source_file", "kafka://([a-z_0-9]+)/", 1)
    )
    parsed = parse_events(decoded.select("raw", "source_file", "_pre_reason"), CLICKS)
    got = {r.source_file.split("/")[2]: r.reason for r in parsed.collect()}
    for kind, expected in HOSTILE_KINDS.items():
        if kind == "duplicate_id":  # a valid line alone; the stream's dedup state makes it a duplicate
            assert got[kind] is None
        elif expected is None:
            assert got[kind] is None, (kind, got[kind])
        else:
            assert got[kind] is not None and got[kind].startswith(expected), (kind, got[kind])
