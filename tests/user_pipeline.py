"""A user's own pipeline, written into a folder outside the package, its input lines, and an independent
recompute of its views with pandas (nothing of the project's code computes the expected answers).

The pipeline ("payments") has epoch-millisecond times, nested fields, a filter, derived keys, a hopping
window, an all-time view and a view with no keys at all.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

MODULE = '''
"""A user's pipeline, declared with the public API only."""
from pyspark.sql import types as T

import lambda_pipeline as lp

PAYMENTS = lp.EventSource(
    "payments",
    T.StructType([
        T.StructField("payment_id", T.StringType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("merchant", T.StructType([
            T.StructField("id", T.StringType()),
            T.StructField("country", T.StringType()),
        ])),
        T.StructField("amount", T.DoubleType()),
        T.StructField("cents", T.LongType()),
        T.StructField("status", T.StringType()),
    ]),
    id_column="payment_id",
    time_column="ts",
    required=("payment_id", "ts"),
    time_format="epoch_millis",
)

FAILED_HOURLY = lp.View(
    "failed_hourly", PAYMENTS,
    columns={"merchant_id": "merchant.id", "country": "lower(merchant.country)"},
    where="status = 'failed'",
    keys=("merchant_id", "country"),
    window=lp.TumblingWindow("ts", "1 hour"),
    measures={"payments": lp.count(), "cents": lp.sum_of("cents"), "min_cents": lp.min_of("cents"),
              "max_amount": lp.max_of("amount"), "avg_amount": lp.avg_of("amount")},
)

COUNTRY_HOPPING = lp.View(
    "country_hopping", PAYMENTS,
    columns={"country": "lower(merchant.country)", "merchant_id": "merchant.id"},
    keys=("country",),
    window=lp.HoppingWindow("ts", "10 minutes", "5 minutes"),
    measures={"payments": lp.count(), "amount": lp.sum_of("amount"),
              "merchants": lp.approx_distinct("merchant_id"), "median_amount": lp.approx_quantile("amount", 0.5)},
)

MERCHANT_ALL_TIME = lp.View(
    "merchant_all_time", PAYMENTS,
    columns={"merchant_id": "merchant.id"},
    keys=("merchant_id",),
    window=None,
    measures={"payments": lp.count(), "cents": lp.sum_of("cents"), "first_seen": lp.min_of("ts"),
              "last_seen": lp.max_of("ts")},
)

EVERYTHING = lp.View("everything", PAYMENTS, measures={"payments": lp.count(), "cents": lp.sum_of("cents")})

PIPELINE = lp.Pipeline("payments", PAYMENTS, [FAILED_HOURLY, COUNTRY_HOPPING, MERCHANT_ALL_TIME, EVERYTHING])
'''


def write_module(folder: Path, name: str = "payments_pipeline.py") -> Path:
    """The user's module in ``folder`` (not importable before the run: nothing puts it on the path)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(MODULE, encoding="utf-8")
    return path


def evolved_module(folder: Path, name: str, above_cents: int) -> Path:
    """The same pipeline with ``failed_hourly``'s filter changed: another definition of that view only."""
    path = write_module(folder, name)
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace("where=\"status = 'failed'\"", f"where=\"status = 'failed' AND cents > {above_cents}\"")
    )
    return path


@dataclass
class Lines:
    """Input lines, and the valid events among them (one per id) for the recompute."""

    lines: list[str]
    events: list[dict[str, Any]]
    repeats: int = 0
    """Lines that repeat a valid event: quarantined as duplicates."""


def payment_lines(n: int, seed: int, now_ms: int, *, first_id: int = 0) -> Lines:
    """``n`` payments, some late by up to two hours, with repeats, malformed lines and a missing country."""
    rng = random.Random(seed)
    merchants = [f"M{i}" for i in range(7)]
    countries = ["FR", "fr", "De", "US", None]
    lines: list[str] = []
    events: list[dict[str, Any]] = []
    repeats = 0
    for i in range(first_id, first_id + n):
        late = rng.random() < 0.2
        ts = now_ms - (rng.randrange(7_200_000) if late else rng.randrange(600_000))
        merchant = rng.choices(merchants, weights=[20, 10, 5, 3, 2, 1, 1])[0]
        country = rng.choice(countries)
        event = {
            "payment_id": f"p{i}",
            "ts": ts,
            "merchant": {"id": merchant, **({"country": country} if country is not None else {})},
            "amount": round(rng.uniform(0.5, 500.0), 2),
            "cents": rng.randrange(1, 100_000),
            "status": rng.choice(["ok", "ok", "ok", "failed"]),
        }
        line = json.dumps(event)
        lines.append(line)
        events.append(event)
        if rng.random() < 0.05:
            lines.append(line)  # a repeat: counted once
            repeats += 1
        roll = rng.random()
        if roll < 0.02:
            lines.append("{not json")
        elif roll < 0.04:
            lines.append(json.dumps({**event, "payment_id": f"bad{i}", "ts": "yesterday"}))
        elif roll < 0.05:
            lines.append(json.dumps({k: v for k, v in event.items() if k != "payment_id"}))
    rng.shuffle(lines)
    return Lines(lines, events, repeats)


def write_lines(landing: Path, lines: Iterable[str], name: str) -> None:
    """A whole file, renamed into the landing folder, as ingest expects."""
    landing.mkdir(parents=True, exist_ok=True)
    hidden = landing / f".{name}.tmp"
    hidden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hidden.rename(landing / name)


# ---- the independent recompute ------------------------------------------------------------------------


def _frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for e in events:
        country = e["merchant"].get("country")
        rows.append(
            {
                "ts_ms": e["ts"],
                "seconds": e["ts"] // 1000,
                "merchant_id": e["merchant"]["id"],
                "country": country.lower() if country is not None else None,
                "amount": e["amount"],
                "cents": e["cents"],
                "status": e["status"],
            }
        )
    return pd.DataFrame(rows)


def _windows(frame: pd.DataFrame, size: int, slide: int) -> pd.DataFrame:
    copies = []
    for i in range(size // slide):
        copy = frame.copy()
        copy["ws"] = (copy["seconds"] // slide) * slide - i * slide
        copies.append(copy)
    return pd.concat(copies, ignore_index=True)


def expected_views(
    events: list[dict[str, Any]], *, failed_above_cents: int | None = None
) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Each view as {group key: {measure: value}}, recomputed with pandas from the input events.

    ``failed_above_cents``: the filter of ``failed_hourly`` as :func:`evolved_module` changes it."""
    frame = _frame(events)
    out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}

    kept = frame["status"] == "failed"
    if failed_above_cents is not None:
        kept &= frame["cents"] > failed_above_cents
    failed = _windows(frame[kept], 3600, 3600)
    out["failed_hourly"] = {
        key: {
            "payments": len(g),
            "cents": int(g["cents"].sum()),
            "min_cents": int(g["cents"].min()),
            "max_amount": float(g["amount"].max()),
            "avg_amount": float(g["amount"].sum()) / len(g),
        }
        for key, g in failed.groupby(["merchant_id", "country", "ws"], dropna=False)
    }
    hopping = _windows(frame, 600, 300)
    out["country_hopping"] = {
        key: {
            "payments": len(g),
            "amount": float(g["amount"].sum()),
            "merchants": g["merchant_id"].nunique(),
            "median_amount": sorted(g["amount"]),
        }
        for key, g in hopping.groupby(["country", "ws"], dropna=False)
    }
    out["merchant_all_time"] = {
        (key,): {
            "payments": len(g),
            "cents": int(g["cents"].sum()),
            "first_seen": int(g["ts_ms"].min()),
            "last_seen": int(g["ts_ms"].max()),
        }
        for key, g in frame.groupby("merchant_id")
    }
    out["everything"] = {(): {"payments": len(frame), "cents": int(frame["cents"].sum())}} if len(frame) else {}
    return {view: {_plain(k): v for k, v in rows.items()} for view, rows in out.items()}


def _plain(key: Any) -> tuple[Any, ...]:
    key = key if isinstance(key, tuple) else (key,)
    return tuple(
        None if (isinstance(k, float) and math.isnan(k)) else (int(k) if hasattr(k, "item") else k) for k in key
    )


QUERIES = {
    "failed_hourly": "SELECT merchant_id, country, unix_seconds(window_start) AS ws, payments, cents, min_cents, "
    "max_amount, avg_amount FROM {layer}.failed_hourly",
    "country_hopping": "SELECT country, unix_seconds(window_start) AS ws, payments, amount, merchants, median_amount "
    "FROM {layer}.country_hopping",
    "merchant_all_time": "SELECT merchant_id, payments, cents, unix_millis(first_seen) AS first_seen, "
    "unix_millis(last_seen) AS last_seen FROM {layer}.merchant_all_time",
    "everything": "SELECT payments, cents FROM {layer}.everything",
}
KEYS = {
    "failed_hourly": ("merchant_id", "country", "ws"),
    "country_hopping": ("country", "ws"),
    "merchant_all_time": ("merchant_id",),
    "everything": (),
}

HLL_BOUND = 3 * 1.04 / math.sqrt(2**12)
"""approx_distinct (HLL, lg_k 12): three standard errors of 1.04/sqrt(2^12), plus one."""
KLL_RANK_BOUND = 1.65 / 200
"""approx_quantile (KLL, k 200): the normalised rank error 1.65/k, plus one rank either side."""


def rows_of(frame_rows: Iterable[Any], view: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for row in frame_rows:
        d = row.asDict()
        out[tuple(d.pop(k) for k in KEYS[view])] = d
    return out


def assert_view_equals(
    view: str, got: dict[tuple[Any, ...], dict[str, Any]], want: dict[tuple[Any, ...], dict[str, Any]]
) -> None:
    """Exact for counts, integer sums, min and max; 1e-9 relative for double sums and means; sketches within
    their bounds (HLL_BOUND, KLL_RANK_BOUND)."""
    assert set(got) == set(want), (view, sorted(set(got) ^ set(want), key=repr)[:5])
    for key, expected in want.items():
        row = got[key]
        for measure, value in expected.items():
            actual = row[measure]
            where = (view, key, measure, actual, value)
            if measure in ("amount", "avg_amount"):
                assert math.isclose(actual, value, rel_tol=1e-9), where
            elif measure == "merchants":
                assert abs(actual - value) <= HLL_BOUND * value + 1, where
            elif measure == "median_amount":
                values = value  # a value that repeats holds every rank from its first copy to its last
                low, high = sum(v < actual for v in values), sum(v <= actual for v in values)
                target, slack = 0.5 * len(values), KLL_RANK_BOUND * len(values) + 1
                assert low - slack <= target <= high + slack, where
            else:
                assert actual == value, where
