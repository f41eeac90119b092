"""What the Kafka benchmark measures besides visibility: checkpoints, throughput and lag, Spark jobs."""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import percentile, summary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lambda_pipeline.core.config import KafkaSettings

KEPT_UP_RATIO = 0.97
LAG_GRID_SECONDS = 0.25


# ---- the query's checkpoint, read from the local file system -------------------------------------------------


def _read_json_lines(path: Path) -> list[Any] | None:
    from lambda_pipeline.core.streaming import json_lines

    try:
        return json_lines(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class CheckpointBatch:
    batch_id: int
    start: dict[int, int]
    end: dict[int, int]
    committed_at: float

    @property
    def messages(self) -> int:
        return sum(self.end.values()) - sum(self.start.get(p, 0) for p in self.end)


class Checkpoint:
    """Committed micro-batches of a Kafka streaming query (one source), from its checkpoint folder."""

    def __init__(self, path: str, topic: str) -> None:
        self.dir, self.topic = Path(path.removeprefix("file:")), topic

    def _offsets(self, name: str) -> dict[int, int] | None:
        entries = _read_json_lines(self.dir / "offsets" / name)
        if not entries or len(entries) < 2 or not isinstance(entries[-1], dict):
            return None
        return {int(p): int(o) for p, o in entries[-1].get(self.topic, {}).items()}

    def committed_ids(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.dir / "commits") if n.isdigit())
        except FileNotFoundError:
            return []

    def committed_total(self) -> int:
        """Messages committed so far: the sum of the end offsets of the newest committed micro-batch."""
        ids = self.committed_ids()
        end = self._offsets(str(ids[-1])) if ids else None
        return sum(end.values()) if end else 0

    def batches(self) -> list[CheckpointBatch]:
        out = []
        initial_entries = _read_json_lines(self.dir / "sources" / "0" / "0") or []
        initial = initial_entries[0] if initial_entries and isinstance(initial_entries[0], dict) else {}
        previous: dict[int, int] = {int(p): int(o) for p, o in initial.get(self.topic, {}).items()}
        for batch_id in self.committed_ids():
            end = self._offsets(str(batch_id))
            if end is None:
                continue
            start = self._offsets(str(batch_id - 1)) if batch_id > 0 else previous
            start = {p: o for p, o in (start or previous).items() if o >= 0}
            try:
                committed_at = (self.dir / "commits" / str(batch_id)).stat().st_mtime
            except OSError:
                continue
            out.append(CheckpointBatch(batch_id, start, end, committed_at))
        return out


# ---- analysis helpers -------------------------------------------------------------------------------------


def weighted_summary(pairs: list[tuple[float, int]], scale: float = 1.0) -> dict[str, float | int]:
    """``summary`` of values given as (value, count) pairs: the same percentiles as on the expanded list."""
    data = sorted((v * scale, n) for v, n in pairs if n > 0)
    if not data:
        return summary([])
    cumulative = list(itertools.accumulate(n for _, n in data))
    total = cumulative[-1]

    def at(index: int) -> float:
        return data[bisect.bisect_right(cumulative, index)][0]

    def q(p: float) -> float:
        pos = (total - 1) * p / 100.0
        lo, hi = math.floor(pos), math.ceil(pos)
        a, b = at(lo), at(hi)
        return a + (b - a) * (pos - lo)

    return {
        "n": total,
        "p50": q(50),
        "p95": q(95),
        "p99": q(99),
        "min": data[0][0],
        "mean": sum(v * n for v, n in data) / total,
        "max": data[-1][0],
    }


class Steps:
    """A step function given as (time, value) points sorted by time; 0 before the first point."""

    def __init__(self, points: list[tuple[float, int]]) -> None:
        self.times, self.values = [p[0] for p in points], [p[1] for p in points]

    def __call__(self, t: float) -> int:
        i = bisect.bisect_right(self.times, t)
        return self.values[i - 1] if i else 0


def topic_timestamps(spark: SparkSession, kafka: KafkaSettings, topic: str) -> DataFrame:
    """(partition, offset, ts) of every message of ``topic``: ts = its Kafka timestamp (CreateTime) in ms."""
    from pyspark.sql import functions as F

    reader = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
    )
    for key, value in kafka.resolved_options().items():
        reader = reader.option(f"kafka.{key}", value)
    return reader.load().select(
        F.col("partition").cast("int").alias("partition"),
        F.col("offset"),
        F.unix_millis("timestamp").alias("ts"),
        F.col("timestampType").alias("ts_type"),
    )


def spark_jobs(spark: SparkSession, since: float, until: float, owners: dict[str, str]) -> dict[str, Any]:
    """Spark jobs submitted in [since, until] (UI REST API), grouped by owner and name; the raw list too.

    The owner is the streaming query whose run id is the job group; jobs started from other threads (the
    ingest job's parallel writes run in a thread pool, the poller, Delta's background snapshot work) have
    no group and show as ``other``.
    """
    import urllib.request

    url = spark.sparkContext.uiWebUrl
    if not url:
        return {}
    app = spark.sparkContext.applicationId
    try:
        with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/jobs", timeout=30) as response:
            jobs = json.loads(response.read())
    except OSError as exc:
        print(f"  (Spark UI REST API not reachable: {exc})", file=sys.stderr)
        return {}

    def stamp(text: str | None) -> float | None:
        if not text:
            return None
        return datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()

    raw, groups = [], {}
    for job in jobs:
        submitted, completed = stamp(job.get("submissionTime")), stamp(job.get("completionTime"))
        if submitted is None or completed is None or not since <= submitted <= until:
            continue
        owner = owners.get(str(job.get("jobGroup")), "other")
        description = str(job.get("description") or "")
        batch = next((ln.split("=", 1)[1].strip() for ln in description.splitlines() if ln.startswith("batch =")), None)
        raw.append(
            {
                "id": job.get("jobId"),
                "owner": owner,
                "batch": int(batch) if batch and batch.isdigit() else None,
                "name": str(job.get("name", "?")),
                "description": " | ".join(ln for ln in description.splitlines() if "runId =" not in ln)[:200],
                "submitted": submitted,
                "seconds": completed - submitted,
                "tasks": job.get("numTasks"),
                "stages": len(job.get("stageIds", [])),
            }
        )
        # Delta's own jobs say what they are in the description; the name is a meaningless call site there.
        kind = raw[-1]["name"]
        if "Compute snapshot" in description:
            kind = "Delta: compute snapshot (state reconstruction)"
        elif "Delta:" in description:
            kind = description[description.index("Delta:") :].splitlines()[0][:60]
        raw[-1]["kind"] = kind
        groups.setdefault((owner, kind), []).append(completed - submitted)
    summary_rows = [
        {
            "owner": owner,
            "name": name,
            "jobs": len(v),
            "total_s": sum(v),
            "p50_ms": percentile(v, 50) * 1000,
            "max_ms": max(v) * 1000,
        }
        for (owner, name), v in groups.items()
    ]
    return {
        "by_owner_and_name": sorted(summary_rows, key=lambda g: -g["total_s"]),
        "jobs": sorted(raw, key=lambda j: j["submitted"]),
    }


# ---- throughput from the producer log and the query's checkpoint ---------------------------------------------


def throughput(
    produced: dict[str, Any], batches: list[CheckpointBatch], warmup: float, base: int, drained_at: float | None
) -> dict[str, Any]:
    """Input and processed rates, lag and kept-up verdict over the measured window (see the docstring)."""
    log = produced["log"]
    sent = Steps([(t, m) for t, m, _ in log])
    events = Steps([(t, e) for t, _, e in log])
    t0, t1 = produced["start"] + warmup, log[-1][0]
    if t1 <= t0:  # no measured window (warmup >= run): use the whole run
        t0 = produced["start"]
    span = t1 - t0
    committed = Steps(sorted((b.committed_at, sum(b.end.values()) - base) for b in batches))
    input_msgs = (sent(t1) - sent(t0)) / span
    input_events = (events(t1) - events(t0)) / span
    processed = (committed(t1) - committed(t0)) / span
    grid = [t0 + i * LAG_GRID_SECONDS for i in range(int(span / LAG_GRID_SECONDS) + 1)]
    lag = [(t, sent(t) - committed(t)) for t in grid]

    def peak(lo: float, hi: float) -> float:
        values = [v for t, v in lag if t0 + lo * span <= t <= t0 + hi * span]
        return float(max(values)) if values else math.nan

    lag_mid, lag_end = peak(0.4, 0.6), peak(0.8, 1.0)
    ratio = processed / input_msgs if input_msgs else math.nan
    growing = lag_end > lag_mid + input_msgs * 1.0
    kept_up = ratio >= KEPT_UP_RATIO and not growing
    reasons = []
    if ratio < KEPT_UP_RATIO:
        reasons.append(f"processed {ratio:.1%} of input")
    if growing:
        reasons.append(f"lag grew from {lag_mid:,.0f} to {lag_end:,.0f}")
    return {
        "window": [t0, t1],
        "window_seconds": span,
        "input_msgs_per_s": input_msgs,
        "input_events_per_s": input_events,
        "processed_msgs_per_s": processed,
        "processed_ratio": ratio,
        "lag_mid_msgs": lag_mid,
        "lag_end_msgs": lag_end,
        "lag_at_last_burst_msgs": float(lag[-1][1]) if lag else math.nan,
        "lag_max_msgs": float(max((v for _, v in lag), default=math.nan)),
        "drain_seconds": (drained_at - t1) if drained_at is not None else None,
        "kept_up": kept_up,
        "not_kept_up_because": "; ".join(reasons),
        "lag_curve": [(round(t - t0, 2), v) for t, v in lag[:: max(1, round(1 / LAG_GRID_SECONDS))]],
    }


def lag_fields(end_lag: tuple[int, int], base: int) -> dict[str, Any]:
    """The lag as the broker sees it once the producer has flushed: topic latest offsets - committed."""
    latest, committed = end_lag
    return {
        "topic_messages_at_end": latest - base if latest >= 0 else None,
        "committed_at_end": committed - base,
        "lag_at_end_topic_msgs": latest - committed if latest >= 0 else None,
    }


def producer_summary(produced: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": produced["messages"],
        "events": produced["events"],
        "acked": produced["acked"],
        "seconds": produced["wall_seconds"],
        "cpu_seconds": produced["cpu_seconds"],
        "cpu_share_of_one_core": produced["cpu_seconds"] / produced["wall_seconds"] if produced["wall_seconds"] else 0,
        "late_bursts": produced["late_ticks"],
        "bursts": produced["ticks"],
    }
