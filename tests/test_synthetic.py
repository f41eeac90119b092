"""Load for any source: the synthetic and IoT generators' lines, judged against the schema by code of their own.

Pure Python but for two checks through ingest's own parser (``parse_events``) on the session's Spark.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import types as T

from lambda_pipeline.cli.generate import generator_for
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.views import EventSource, TumblingWindow, View, count
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import HOSTILE_KINDS, ClickstreamGenerator
from lambda_pipeline.pipelines.iot_generator import OVERHEAT_C, IotGenerator
from lambda_pipeline.pipelines.synthetic import MALFORMED_REASONS, SyntheticGenerator

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=timezone.utc)
S, F = T.StructType, T.StructField

PAYMENTS = EventSource(
    name="payments",
    schema=S(
        [
            F("payment_id", T.StringType()),
            F("ts", T.TimestampType()),
            F("user_id", T.StringType()),
            F("country", T.StringType()),
            F("amount", T.DoubleType()),
            F("items", T.LongType()),
            F("card", S([F("brand", T.StringType()), F("issuer", S([F("country", T.StringType())]))])),
            F("temperature_c", T.DoubleType()),
            F("fraud_pct", T.DoubleType()),
            F("approved", T.BooleanType()),
        ]
    ),
    id_column="payment_id",
    time_column="ts",
    required=("payment_id", "ts", "user_id", "amount", "card"),
)

# The shipped IoT source as /work/notes/api24.md declares it (lambda_pipeline/pipelines/iot.py, by the lead).
READINGS = EventSource(
    name="readings",
    schema=S(
        [
            F("reading_id", T.StringType()),
            F("ts", T.TimestampType()),
            F("device", S([F("id", T.StringType()), F("site", T.StringType()), F("firmware", T.StringType())])),
            F(
                "metrics",
                S(
                    [
                        F("temperature_c", T.DoubleType()),
                        F("humidity_pct", T.DoubleType()),
                        F("battery_v", T.DoubleType()),
                    ]
                ),
            ),
            F("status", T.StringType()),
        ]
    ),
    id_column="reading_id",
    time_column="ts",
    required=("reading_id", "ts", "device"),
)

_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")


def instant(value: Any, time_format: str) -> datetime | None:
    """The moment a line's time field names, read as the contract says; None when it names none."""
    if time_format == "iso8601":
        if not isinstance(value, str) or not _ISO.match(value):
            return None
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return datetime.fromtimestamp(value / (1000 if time_format == "epoch_millis" else 1), tz=timezone.utc)


def conforms(value: Any, dtype: T.DataType) -> bool:
    """Whether a JSON value fits a (non-time) field of the schema."""
    if isinstance(dtype, T.StructType):
        return isinstance(value, dict) and all(f.name in value and conforms(value[f.name], f.dataType) for f in dtype)
    if isinstance(dtype, T.StringType):
        return isinstance(value, str)
    if isinstance(dtype, T.LongType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(dtype, T.DoubleType):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(dtype, T.BooleanType):
        return isinstance(value, bool)
    raise AssertionError(f"no check for {dtype}")


def valid_record(line: str, source: EventSource, time_format: str) -> dict[str, Any] | None:
    """The line's object when it is a valid event of ``source``, else None."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or any(f.name not in record for f in source.schema):
        return None
    for f in source.schema:
        ok = (
            instant(record[f.name], time_format) is not None
            if f.name == source.time_column
            else conforms(record[f.name], f.dataType)
        )
        if not ok:
            return None
    return record


def split(lines: list[str], source: EventSource, time_format: str) -> tuple[list[dict[str, Any]], list[str]]:
    valid, bad = [], []
    for line in lines:
        record = valid_record(line, source, time_format)
        if record is None:
            bad.append(line)
        else:
            valid.append(record)
    return valid, bad


@pytest.mark.parametrize("time_format", ["iso8601", "epoch_millis", "epoch_seconds"])
def test_lines_follow_the_schema_in_each_time_format(time_format: str) -> None:
    generator = SyntheticGenerator(
        PAYMENTS, 5, time_format=time_format, duplicate_fraction=0.05, malformed_fraction=0.04
    )
    lines, stats = generator.lines(2_000, NOW)
    valid, bad = split(lines, PAYMENTS, time_format)
    assert (stats.events, stats.duplicates, sum(stats.malformed.values())) == (2_000, 100, 80)
    assert len(valid) == stats.events + stats.duplicates and len(bad) == 80 == len(lines) - len(valid)
    assert all(isinstance(r["card"]["issuer"]["country"], str) for r in valid)  # nested two deep
    moments = [instant(r["ts"], time_format) for r in valid]
    assert all(m is not None and NOW - timedelta(hours=1, seconds=1) <= m <= NOW for m in moments)
    late = {
        r["payment_id"] for r, m in zip(valid, moments, strict=True) if m is not None and m < NOW - timedelta(minutes=1)
    }
    assert len(late) == stats.late and 0.03 * 2_000 < stats.late < 0.07 * 2_000
    stamps = [r["ts"] for r in valid]
    if time_format == "iso8601":  # 'Z' mostly, an offset now and then: the same instant either way
        assert Counter(s.endswith("Z") for s in stamps).keys() == {True, False}
    elif time_format == "epoch_millis":
        assert all(1e12 < s < 1e13 for s in stamps) and len({s % 1000 for s in stamps}) > 100
    else:
        assert all(1e9 < s < 1e10 for s in stamps)


def test_the_source_time_format_is_the_default() -> None:
    expected = getattr(PAYMENTS, "time_format", "iso8601")
    assert SyntheticGenerator(PAYMENTS).time_format == expected
    with pytest.raises(ValueError, match="unknown time_format 'epoch_minutes'"):
        SyntheticGenerator(PAYMENTS, time_format="epoch_minutes")


def test_the_same_seed_writes_the_same_lines() -> None:
    first = SyntheticGenerator(PAYMENTS, 11).lines(300, NOW)[0] + SyntheticGenerator(PAYMENTS, 11).lines(1, NOW)[0]
    again = SyntheticGenerator(PAYMENTS, 11).lines(300, NOW)[0] + SyntheticGenerator(PAYMENTS, 11).lines(1, NOW)[0]
    other = SyntheticGenerator(PAYMENTS, 12).lines(300, NOW)[0]
    assert first == again and first[:300] != other


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    batches=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    duplicate=st.floats(0, 0.9),
    malformed=st.floats(0, 0.9),
)
def test_any_seed_gives_unique_ids_and_exact_shares(
    seed: int, batches: list[int], duplicate: float, malformed: float
) -> None:
    """Each event once under its own id, every repeat a copy of an earlier line; shares exact over all batches."""
    generator = SyntheticGenerator(PAYMENTS, seed, duplicate_fraction=duplicate, malformed_fraction=malformed)
    seen: dict[str, dict[str, Any]] = {}
    events = duplicates = bad_lines = 0
    for n in batches:
        lines, stats = generator.lines(n, NOW)
        valid, bad = split(lines, PAYMENTS, "iso8601")
        for record in valid:
            assert seen.setdefault(record["payment_id"], record) == record
        assert len(set(stats.event_ids)) == len(stats.event_ids) == n
        assert len(valid) == n + stats.duplicates and len(bad) == sum(stats.malformed.values())
        events, duplicates, bad_lines = events + n, duplicates + stats.duplicates, bad_lines + len(bad)
    assert len(seen) == events
    # Owed lines never exceed the batch's events (a share below 1), so the shares are exact whatever the batches.
    assert (duplicates, bad_lines) == (int(events * duplicate + 0.5), int(events * malformed + 0.5))


def test_shares_stay_exact_in_small_batches() -> None:
    """Ten events a tick at 2% malformed still gives 2% over the run, not none."""
    generator = SyntheticGenerator(PAYMENTS, 3, duplicate_fraction=0.03, malformed_fraction=0.02)
    runs = [generator.lines(10, NOW)[1] for _ in range(100)]
    assert sum(s.duplicates for s in runs) == 30
    assert sum(sum(s.malformed.values()) for s in runs) == 20


def test_keys_are_skewed_and_numbers_plausible() -> None:
    valid, _ = split(SyntheticGenerator(PAYMENTS, 8).lines(5_000, NOW)[0], PAYMENTS, "iso8601")
    users = Counter(r["user_id"] for r in valid).most_common()
    assert len(users) <= 1_000  # a bounded pool
    assert users[0][1] > 20 * users[len(users) // 2][1]  # a few hot values, a long tail
    countries = Counter(r["country"] for r in valid)
    assert set(countries) <= {
        "US",
        "DE",
        "GB",
        "FR",
        "IN",
        "BR",
        "JP",
        "CA",
        "ES",
        "IT",
        "NL",
        "MX",
        "AU",
        "SE",
        "PL",
        "KR",
    }
    assert 10 < statistics.mean(r["temperature_c"] for r in valid) < 30
    assert all(0 <= r["fraud_pct"] <= 100 for r in valid) and all(r["amount"] > 0 for r in valid)
    assert all(r["items"] >= 1 for r in valid) and statistics.median(r["items"] for r in valid) < 5


@pytest.mark.parametrize("kind", sorted(MALFORMED_REASONS))
def test_each_malformed_kind_is_bad_the_way_it_says(kind: str) -> None:
    generator = SyntheticGenerator(PAYMENTS, 2)
    _, record, _ = generator._record(NOW)
    line = generator._spoil(kind, dict(record))
    assert valid_record(line, PAYMENTS, "iso8601") is None
    if kind == "malformed_json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    elif kind == "not_an_object":
        assert isinstance(json.loads(line), list)
    elif kind == "wrong_type":
        spoilt = [k for k, v in json.loads(line).items() if v != record[k]]
        assert len(spoilt) == 1 and isinstance(json.loads(line)[spoilt[0]], str) and spoilt[0] != "user_id"
    else:
        assert set(record) - set(json.loads(line)) <= set(PAYMENTS.required)


def test_a_source_without_required_fields_gets_no_missing_field_lines() -> None:
    loose = EventSource("loose", PAYMENTS.schema, "payment_id", "ts")
    generator = SyntheticGenerator(loose, 1, malformed_fraction=0.5)
    _, stats = generator.lines(200, NOW)
    assert sum(stats.malformed.values()) == 100 and "missing_field" not in stats.malformed
    assert not {"missing_field", "null_field"} & set(generator.hostile_kinds)


def test_a_field_json_cannot_carry_is_refused() -> None:
    odd = EventSource("odd", S([*PAYMENTS.schema.fields, F("wait", T.DayTimeIntervalType())]), "payment_id", "ts")
    with pytest.raises(LambdaError, match="field 'wait' of type interval day to second"):
        SyntheticGenerator(odd)


def test_hostile_messages_for_any_source() -> None:
    generator = SyntheticGenerator(PAYMENTS, 4)
    generator.lines(5, NOW)
    for kind in generator.hostile_kinds:
        value, event_id = generator.hostile_message(kind, NOW)
        if kind == "null_value":
            assert value is None
            continue
        assert value is not None
        if kind == "non_utf8":
            with pytest.raises(UnicodeDecodeError):
                value.decode()
            continue
        record = valid_record(value.decode(), PAYMENTS, "iso8601")
        if HOSTILE_KINDS[kind] is None:  # schema drift: an event with a field the schema does not know
            assert record is not None and event_id == record["payment_id"] and "referrer" in record
        elif kind in ("future_time", "ancient_time", "oversize", "duplicate_id"):
            assert record is not None and event_id is None  # well formed, refused by policy
            moment = instant(record["ts"], "iso8601")
            assert moment is not None
            assert {"future_time": moment > NOW + timedelta(days=300), "ancient_time": moment.year == 1969}.get(
                kind, True
            )
        else:
            assert record is None and event_id is None
    _, stats = generator.messages(100, hostile_fraction=0.12, now=NOW)
    assert sum(stats.hostile.values()) == 12 and set(stats.hostile) == set(generator.hostile_kinds)


def iot_generator(seed: int = 3, **kwargs: Any) -> IotGenerator:
    return IotGenerator(READINGS, seed, time_format="epoch_millis", **kwargs)


def test_iot_readings_follow_the_contract() -> None:
    lines, stats = iot_generator().lines(20_000, NOW)
    valid, bad = split(lines, READINGS, "epoch_millis")
    assert len(valid) == stats.events + stats.duplicates and len(bad) == sum(stats.malformed.values()) > 0
    assert all(
        isinstance(r["ts"], int) and NOW.timestamp() * 1000 - 3_600_001 <= r["ts"] <= NOW.timestamp() * 1000
        for r in valid
    )
    sites: dict[str, set[str]] = defaultdict(set)
    for r in valid:
        sites[r["device"]["id"]].add(r["device"]["site"])
    assert all(len(s) == 1 for s in sites.values()) and 1 < len({s for v in sites.values() for s in v}) <= 6
    hot = [r for r in valid if r["metrics"]["temperature_c"] > OVERHEAT_C]
    assert 0.001 * len(valid) < len(hot) < 0.05 * len(valid)  # now and then
    assert len({r["device"]["id"] for r in hot}) < len(sites) / 4  # a few devices, not all
    assert all((r["status"] == "overheating") == (r["metrics"]["temperature_c"] > OVERHEAT_C) for r in valid)
    assert all(5 <= r["metrics"]["humidity_pct"] <= 95 and 3.2 <= r["metrics"]["battery_v"] <= 4.2 for r in valid)


def test_iot_temperatures_drift_rather_than_jump() -> None:
    valid, _ = split(iot_generator(6, late_fraction=0.0).lines(5_000, NOW)[0], READINGS, "epoch_millis")
    by_device: dict[str, list[float]] = defaultdict(list)
    for r in dict((r["reading_id"], r) for r in valid).values():  # each reading once, in the order made
        by_device[r["device"]["id"]].append(r["metrics"]["temperature_c"])
    steps = [abs(b - a) for temps in by_device.values() for a, b in itertools.pairwise(temps)]
    assert statistics.median(steps) < 0.6
    assert statistics.pstdev([statistics.mean(t) for t in by_device.values() if len(t) > 20]) > 1.0  # sites differ


def test_the_iot_generator_refuses_another_schema() -> None:
    with pytest.raises(LambdaError, match="the IoT generator writes"):
        IotGenerator(PAYMENTS)


def _pipeline(name: str, source: EventSource, key: str) -> Pipeline:
    view = View("n", source, keys=(key,), window=TumblingWindow("ts", "5 minutes"), measures={"n": count()})
    return Pipeline(name, source, (view,))


def test_the_pipeline_chooses_its_generator() -> None:
    assert type(generator_for(CLICKSTREAM, 1)) is ClickstreamGenerator
    assert type(generator_for(_pipeline("iot", READINGS, "status"), 1)) is IotGenerator
    assert type(generator_for(_pipeline("mine", READINGS, "status"), 1)) is SyntheticGenerator
    assert type(generator_for(_pipeline("iot", PAYMENTS, "country"), 1)) is SyntheticGenerator
    assert type(generator_for(_pipeline("clickstream", PAYMENTS, "country"), 1)) is SyntheticGenerator
    made = generator_for(_pipeline("mine", PAYMENTS, "country"), 1, duplicate_fraction=0.5, malformed_fraction=0.25)
    _, stats = made.lines(40, NOW)
    assert (stats.duplicates, sum(stats.malformed.values())) == (20, 10)


def test_the_shipped_iot_pipeline_gets_the_iot_generator() -> None:
    """The lead's lambda_pipeline/pipelines/iot.py must declare what the IoT generator writes."""
    from lambda_pipeline.pipelines.registry import load_pipeline

    iot = load_pipeline("iot")
    assert IotGenerator.fits(iot.source) and type(generator_for(iot, 1)) is IotGenerator
    assert getattr(iot.source, "time_format", None) == "epoch_millis"


def test_any_generator_writes_whole_files(tmp_path: Path) -> None:
    """The sinks' protocol: one whole file per call, renamed into the landing folder, its stats true."""
    generator = generator_for(_pipeline("mine", PAYMENTS, "country"), 2)
    written = generator.write(tmp_path / "landing", 250, files=2)
    assert [w.events for w in written] == [125, 125]
    assert sorted(p.name for p in (tmp_path / "landing").iterdir()) == sorted(w.path.name for w in written)
    so_far: set[str] = set()
    for stats in written:
        lines = Path(stats.path).read_text(encoding="utf-8").splitlines()
        valid, bad = split(lines, PAYMENTS, "iso8601")
        assert stats.lines == len(lines) and len(bad) == sum(stats.malformed.values())
        so_far |= set(stats.event_ids)
        assert set(stats.event_ids) <= {r["payment_id"] for r in valid} <= so_far  # a repeat may be of an earlier file
    values, sent = generator.messages(50, hostile_fraction=0.1, now=NOW)
    assert len(values) == sent.messages and sum(sent.hostile.values()) == 5


def test_generate_takes_the_shares_of_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--to", "files", "--rate", "50", "--seconds", "1", "--seed", "5", "--workdir", str(tmp_path)]
    assert main([*args, "--duplicate-fraction", "0", "--malformed-fraction", "0"]) == 0
    lines = [line for f in (tmp_path / "landing").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(lines) == len({json.loads(line)["event_id"] for line in lines}) == 50
    assert "0 duplicates, 0 malformed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([*args, "--malformed-fraction", "1.5"])
    assert refused.value.code == 2 and "expected a fraction within [0, 1), got '1.5'" in capsys.readouterr().err


def test_ingest_parses_what_it_generates(spark: Any) -> None:
    """Ingest's own parser agrees: valid lines parse to the instants written, the malformed get their reason.

    A flat source, ISO times (with ``Z`` and with offsets): what ingest reads before nested fields and epoch
    times land; the IoT test below covers those.
    """
    from lambda_pipeline.ingestion.routing import REASON, parse_events

    flat = EventSource(
        "payments",
        S([f for f in PAYMENTS.schema if not isinstance(f.dataType, T.StructType)]),
        "payment_id",
        "ts",
        required=("payment_id", "ts", "user_id", "amount"),
    )
    now = datetime.now(timezone.utc)
    generator = SyntheticGenerator(flat, 9, duplicate_fraction=0.05, malformed_fraction=0.1)
    lines, stats = generator.lines(300, now)
    frame = spark.createDataFrame([(line, "f") for line in lines], "raw string, source_file string")
    rows = parse_events(frame, flat).collect()
    reasons = Counter(r[REASON].split(":")[0] for r in rows if r[REASON] is not None)
    expected: Counter[str] = Counter()
    for kind, n in stats.malformed.items():
        expected[MALFORMED_REASONS[kind]] += n
    assert reasons == expected and sum(expected.values()) == 30
    written = {r["payment_id"]: instant(r["ts"], "iso8601") for r in split(lines, flat, "iso8601")[0]}
    parsed = {r["payment_id"]: r["ts"].replace(tzinfo=timezone.utc) for r in rows if r[REASON] is None}
    assert parsed == written and len(parsed) == 300
    assert sum(r[REASON] is None for r in rows) == 300 + stats.duplicates  # parsing keeps repeats: dedup comes later


def test_ingest_parses_iot_readings_in_epoch_millis(spark: Any) -> None:
    from lambda_pipeline.ingestion.routing import REASON, parse_events

    source = EventSource(
        READINGS.name, READINGS.schema, READINGS.id_column, READINGS.time_column, READINGS.required, "epoch_millis"
    )
    lines, stats = IotGenerator(source, 4).lines(300, datetime.now(timezone.utc))
    frame = spark.createDataFrame([(line, "f") for line in lines], "raw string, source_file string")
    rows = parse_events(frame, source).collect()
    assert sum(r[REASON] is not None for r in rows) == sum(stats.malformed.values())
    written = {r["reading_id"]: r for r in split(lines, READINGS, "epoch_millis")[0]}
    for row in (r for r in rows if r[REASON] is None):
        line = written[row["reading_id"]]
        assert row["ts"].replace(tzinfo=timezone.utc) == instant(line["ts"], "epoch_millis")
        assert row["device"]["site"] == line["device"]["site"]
        assert row["metrics"]["temperature_c"] == line["metrics"]["temperature_c"]
