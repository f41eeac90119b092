"""Law, over random view declarations and random events: batch = speed = merged = an independent recompute.

The declarations draw key subsets, derived columns (nested fields, arithmetic, ``hour(t)``, which depends on
the pinned time zone), filters, the three window kinds and numeric measures. The recompute is plain Python
over the same events, with SQL's null rules written out.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

import lambda_pipeline as lp
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT

BASE = 1_796_630_400  # a whole hour, in epoch seconds
SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType()),
        T.StructField("t", T.TimestampType()),
        T.StructField("s", T.StringType()),
        T.StructField("a", T.LongType()),
        T.StructField("n", T.StructType([T.StructField("x", T.LongType())])),
    ]
)
SOURCE = lp.EventSource("law", SCHEMA, "id", "t")


def _fmod(a: int | None, b: int) -> int | None:
    return None if a is None else int(math.fmod(a, b))  # SQL's % keeps the dividend's sign


DERIVED: dict[str, tuple[str, Any]] = {
    "s_low": ("lower(s)", lambda e: None if e["s"] is None else e["s"].lower()),
    "a2": ("a * 2", lambda e: None if e["a"] is None else e["a"] * 2),
    "nx": ("n.x", lambda e: None if e["n"] is None else e["n"]["x"]),
    "amod": ("a % 3", lambda e: _fmod(e["a"], 3)),
    "hour": ("hour(t)", lambda e: datetime.fromtimestamp(e["sec"], timezone.utc).hour),
}
FILTERS: dict[str | None, Any] = {
    None: lambda e: True,
    "a > 0": lambda e: e["a"] is not None and e["a"] > 0,
    "lower(s) = 'x'": lambda e: e["s"] is not None and e["s"].lower() == "x",
    "a % 2 = 0": lambda e: e["a"] is not None and _fmod(e["a"], 2) == 0,
    "n.x >= 10 AND s IS NOT NULL": lambda e: (
        e["n"] is not None and e["n"]["x"] is not None and e["n"]["x"] >= 10 and e["s"] is not None
    ),
}
WINDOWS = [None, lp.TumblingWindow("t", "1 minute"), lp.HoppingWindow("t", "3 minutes", "1 minute")]
NUMERIC = ["a", "a2", "nx", "amod"]
AGGREGATES = {"sum": lp.sum_of, "min": lp.min_of, "max": lp.max_of, "avg": lp.avg_of}


@st.composite
def declarations(draw: st.DrawFn) -> lp.View:
    keys = draw(st.lists(st.sampled_from(["s", "s_low", "nx", "amod", "hour"]), unique=True, max_size=2))
    measures: dict[str, lp.Aggregate] = {"n": lp.count()}
    for kind, column in draw(
        st.lists(st.tuples(st.sampled_from(sorted(AGGREGATES)), st.sampled_from(NUMERIC)), max_size=3)
    ):
        measures[f"{kind}_{column}"] = AGGREGATES[kind](column)
    return lp.View(
        "law_view",
        SOURCE,
        keys=tuple(keys),
        window=draw(st.sampled_from(WINDOWS)),
        measures=measures,
        columns={name: sql for name, (sql, _) in DERIVED.items()},
        where=draw(st.sampled_from(list(FILTERS))),
    )


events_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "sec": st.integers(BASE - 3_600, BASE + 600),
            "s": st.one_of(st.none(), st.sampled_from(["x", "X", "y"])),
            "a": st.one_of(st.none(), st.integers(-20, 20)),
            "n": st.one_of(st.none(), st.fixed_dictionaries({"x": st.one_of(st.none(), st.integers(0, 20))})),
            "tag": st.integers(1, 4),
        }
    ),
    max_size=25,
)


def recompute(view: lp.View, events: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for event in events:
        row = {**event, **{name: f(event) for name, (_, f) in DERIVED.items()}}
        if not FILTERS[view.where](row):
            continue
        windows = [()]
        if view.window is not None:
            slide, k = view.window.slide_seconds, view.window.per_event
            windows = [((row["sec"] // slide) * slide - i * slide,) for i in range(k)]
        for window in windows:
            groups.setdefault(tuple(row[key] for key in view.keys) + window, []).append(row)
    out = {}
    for key, rows in groups.items():
        values: dict[str, Any] = {"n": len(rows)}
        for name in view.measures:
            if name == "n":
                continue
            kind, column = name.split("_", 1)
            present = [r[column] for r in rows if r[column] is not None]
            if kind == "sum":
                values[name] = sum(present) if present else None
            elif kind == "min":
                values[name] = min(present) if present else None
            elif kind == "max":
                values[name] = max(present) if present else None
            else:
                values[name] = sum(present) / len(present) if present else None
        out[key] = values
    return out


def collected(view: lp.View, frame) -> dict[tuple[Any, ...], dict[str, Any]]:
    if view.window is not None:
        frame = frame.withColumn("_ws", F.unix_seconds("window_start")).drop("window_start", "window_end")
    out = {}
    for row in frame.collect():
        d = row.asDict()
        key = tuple(d.pop(k) for k in view.keys) + ((d.pop("_ws"),) if view.window is not None else ())
        out[key] = d
    return out


def same(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want), key=repr)[:4])
    for key, values in want.items():
        for measure, value in values.items():
            actual = got[key][measure]
            if measure.startswith("avg") and value is not None:
                assert math.isclose(actual, value, rel_tol=1e-9), (what, key, measure, actual, value)
            else:
                assert actual == value, (what, key, measure, actual, value)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(view=declarations(), events=events_strategy, covered=st.integers(0, 4))
def test_batch_speed_merged_and_recompute_agree(
    spark: SparkSession, view: lp.View, events: list[dict[str, Any]], covered: int
) -> None:
    view.resolve(spark)
    rows = [
        (f"e{i}", datetime.fromtimestamp(e["sec"], timezone.utc), e["s"], e["a"], e["n"], e["tag"])
        for i, e in enumerate(events)
    ]
    schema = T.StructType([*SCHEMA.fields, T.StructField(INGEST_TAG, T.LongType())])
    frame = spark.createDataFrame(rows, schema).withColumn(INGESTED_AT, F.current_timestamp())
    want = recompute(view, events)

    batch = view.finalize(view.partials(frame, by_tag=False))
    speed = view.finalize(view.partials(frame, by_tag=True).select(*view.state_column_names()))
    covered_states = view.partials(frame.filter(F.col(INGEST_TAG) <= covered), by_tag=False)
    uncovered = view.partials(frame.filter(F.col(INGEST_TAG) > covered), by_tag=True)
    merged = view.finalize(covered_states.unionByName(uncovered.select(*view.state_column_names())))
    for name, layer in (("batch", batch), ("speed", speed), ("merged", merged)):
        same(collected(view, layer), want, name)
