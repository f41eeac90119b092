"""What both freshness benchmarks observe the pipeline with.

The Delta log read from the local file system, the first speed version holding each ingest tag, the latencies
of a produced item, the bounded poll loop, and the streaming-query helpers.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import percentile, summary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

QUANTILES = ("p50", "p95", "p99", "max")
LATENCIES = ("visible", "observed", "ingest", "speed")  # the keys of ``latencies``


# ---- Delta log ---------------------------------------------------------------------------------------------


@dataclass
class Version:
    version: int
    committed_at: float | None  # mtime of its log file: when the commit became readable (written by rename)
    observed_at: float
    operation: str
    adds_data: bool
    tags: set[int] | None  # from the ingest_tag statistics of its added files; None: some file has none


def log_dir(table: str) -> Path:
    return Path(table.removeprefix("file:")) / "_delta_log"


def read_version(log: Path, version: int, observed_at: float | None = None) -> Version | None:
    """One version, from its file in ``_delta_log`` (local tables only); None if it cannot be read."""
    path = log / f"{version:020d}.json"
    try:
        text = path.read_text(encoding="utf-8")
        committed_at = path.stat().st_mtime  # commitInfo.timestamp is taken a few ms before the file is written
    except OSError:
        return None
    observed = time.time() if observed_at is None else observed_at
    operation, adds_data, tags = "", False, set()
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            operation = str(action["commitInfo"].get("operation", ""))
        elif "add" in action and action["add"].get("dataChange", True):
            adds_data = True
            stats = json.loads(action["add"].get("stats") or "{}")
            lo = stats.get("minValues", {}).get("ingest_tag")
            hi = stats.get("maxValues", {}).get("ingest_tag")
            if tags is not None and lo is not None and hi is not None:
                tags.update(range(int(lo), int(hi) + 1))
            else:
                tags = None
    return Version(version, committed_at, observed, operation, adds_data, tags if adds_data else set())


def commit_time(table: str, version: int) -> float | None:
    """When ``version`` of a local table became readable (mtime of its log file); None if unreadable."""
    found = read_version(log_dir(table), version)
    return found.committed_at if found else None


class DeltaLog:
    """New versions of a local Delta table, from its ``_delta_log`` files.

    ``newest`` (e.g. ``latest_version``) says how far to read each poll; without it the files are read until
    one is missing, so polling runs no Spark job.
    """

    def __init__(self, table: str, after: int, newest: Callable[[], int] | None = None) -> None:
        self.log, self.newest = log_dir(table), newest
        self.version = after
        self.versions: list[Version] = []

    def poll(self) -> list[Version]:
        new: list[Version] = []
        if self.newest is None:
            while (found := read_version(self.log, self.version + len(new) + 1)) is not None:
                new.append(found)
        else:
            upto, observed = self.newest(), time.time()
            for n in range(self.version + 1, upto + 1):
                # An unreadable log file: a version of unknown kind, time and tags.
                new.append(read_version(self.log, n, observed) or Version(n, None, observed, "", True, None))
        self.version += len(new)
        self.versions.extend(new)
        return new


# ---- tag visibility ------------------------------------------------------------------------------------------


@dataclass
class TagSeen:
    speed_version: int
    commit_time: float | None
    observed_at: float


class SpeedVisibility:
    """First speed-partials version (its commit time, when the poller saw it) holding each tag above the coverage.

    ``log_only``: versions and their tags come from the log files and their statistics (a Spark query only for
    a file without statistics). Otherwise the newest version comes from ``latest_version`` and the tags of each
    version that adds data from one small Spark query.
    """

    def __init__(self, spark: SparkSession, table: str, covered: int, log_only: bool) -> None:
        from lambda_pipeline.core.tables import latest_version

        self.spark, self.table, self.covered, self.log_only = spark, table, covered, log_only
        newest = None if log_only else (lambda: latest_version(spark, table))
        self.log = DeltaLog(table, latest_version(spark, table), newest)
        self.seen: dict[int, TagSeen] = {}
        self.newest_tag = covered
        self.polls = 0
        self.queries = 0
        self.poll_seconds: list[float] = []

    def poll(self) -> None:
        t0 = time.perf_counter()
        self.polls += 1
        for v in self.log.poll():
            if not v.adds_data or v.operation.upper() == "OPTIMIZE":
                continue  # OPTIMIZE and other rewrites add no rows
            tags = v.tags if self.log_only else None
            for tag in self._query_tags(v.version) if tags is None else tags:
                if tag > self.covered:
                    self.seen.setdefault(tag, TagSeen(v.version, v.committed_at, v.observed_at))
                    self.newest_tag = max(self.newest_tag, tag)
        self.poll_seconds.append(time.perf_counter() - t0)

    def _query_tags(self, version: int) -> set[int]:
        from lambda_pipeline.core.tables import sql_path

        self.queries += 1
        rows = self.spark.sql(
            f"SELECT DISTINCT ingest_tag FROM {sql_path(self.table)} VERSION AS OF {version} "
            f"WHERE ingest_tag > {self.newest_tag}"
        ).collect()
        return {int(r[0]) for r in rows}

    def stats(self, queries_key: str) -> dict[str, float | int]:
        """Polls, Spark queries (under ``queries_key``) and the p50 and p95 of a poll's duration in ms."""
        return {
            "polls": self.polls,
            queries_key: self.queries,
            "poll_ms_p50": percentile(self.poll_seconds, 50) * 1000,
            "poll_ms_p95": percentile(self.poll_seconds, 95) * 1000,
        }


# ---- latencies ---------------------------------------------------------------------------------------------------


def latencies(produced_at: float, seen: TagSeen | None, master_at: float | None) -> dict[str, float | None]:
    """visible, observed, ingest and speed of an item produced at ``produced_at``; None where a time is missing."""
    visible = seen.commit_time if seen else None
    return {
        "visible": visible - produced_at if visible is not None else None,
        "observed": seen.observed_at - produced_at if seen else None,
        "ingest": master_at - produced_at if master_at is not None else None,
        "speed": visible - master_at if visible is not None and master_at is not None else None,
    }


def fmt(value: Any, width: int = 7, digits: int = 2) -> str:
    """A number right-aligned in ``width`` characters; n/a for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'n/a':>{width}}"
    return f"{value:>{width},.{digits}f}"


def print_latencies(stats: dict[str, dict[str, Any]], since: str, short: str = "") -> None:
    """The table of ``latencies`` in seconds; ``since`` names the produce time (``short`` in the ingest row)."""
    labels = {
        "visible": f"visible (speed commit - {since})",
        "observed": f"observed by poller - {since}",
        "ingest": f"  ingest part (master commit - {short or since})",
        "speed": "  speed part (speed commit - master commit)",
    }
    header = f"{'latency, seconds':<44} " + " ".join(f"{q:>7}" for q in QUANTILES)
    print(header)
    print("-" * len(header))
    for key, label in labels.items():
        print(f"{label:<44} " + " ".join(fmt(stats[key][q]) for q in QUANTILES))


class PollLoop:
    """Ticks every ``interval`` seconds until ``timeout`` (then ``timed_out``); a progress line due every 10 s."""

    def __init__(self, timeout: float, interval: float, report_every: float = 10.0) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.interval, self.report_every = interval, report_every
        self.next_report = self.started + report_every
        self.timed_out = False

    def __iter__(self) -> Iterator[float]:
        while True:
            now = time.monotonic()
            if now > self.deadline:
                self.timed_out = True
                return
            yield now
            rest = self.interval - (time.monotonic() - now)
            if rest > 0:
                time.sleep(rest)

    def report_due(self, now: float) -> bool:
        if now < self.next_report:
            return False
        self.next_report = now + self.report_every
        return True

    def elapsed(self) -> float:
        return time.monotonic() - self.started


# ---- streaming queries -------------------------------------------------------------------------------------------


def check_queries(queries: list[StreamingQuery]) -> None:
    for q in queries:
        if not q.isActive:
            raise RuntimeError(f"streaming query {q.name} stopped: {q.exception()}")


def stop_when_idle(queries: list[StreamingQuery], limit: float) -> None:
    """Stop each query between micro-batches if it gets idle within ``limit`` seconds, else stop it anyway.

    Stopping a query in the middle of a micro-batch interrupts its Spark jobs, which works but fills the
    log with interrupt traces (Spark 4.2 can even hit a StackOverflowError while classifying them).
    """
    deadline = time.monotonic() + limit
    for q in queries:
        while q.isActive and time.monotonic() < deadline:
            status = q.status
            if not status.get("isTriggerActive") and not status.get("isDataAvailable"):
                break
            time.sleep(0.05)
        q.stop()


def stop_queries(queries: list[StreamingQuery]) -> None:
    """``stop_when_idle`` within 60 s; if that fails, stop the rest at once."""
    try:
        stop_when_idle(queries, 60.0)
    except Exception as exc:  # stop the rest regardless
        print(f"stopping the queries: {exc}", file=sys.stderr)
        for q in queries:
            if q.isActive:
                q.stop()


STATE_FIELDS = ("numRowsTotal", "allUpdatesTimeMs", "allRemovalsTimeMs", "commitTimeMs")
"""The stateful dedup's figures per micro-batch: rows held, time to update, to evict (it scans all its
state) and to commit, in task milliseconds summed over the partitions."""


def _with_data(query: StreamingQuery) -> tuple[int, list[float], dict[str, list[float]], dict[str, list[float]]]:
    """(progress reports, input rows of each micro-batch with data, their ``durationMs`` by phase, and the
    first state operator's :data:`STATE_FIELDS`)."""
    rows: list[float] = []
    parts: dict[str, list[float]] = {}
    state: dict[str, list[float]] = {}
    reports = 0
    for p in query.recentProgress:
        data = json.loads(p.json) if hasattr(p, "json") else dict(p)
        reports += 1
        if int(data.get("numInputRows", 0)) > 0:
            rows.append(float(data["numInputRows"]))
            for key, value in data.get("durationMs", {}).items():
                parts.setdefault(key, []).append(float(value))
            operator = (data.get("stateOperators") or [{}])[0]
            for key in STATE_FIELDS:
                if operator.get(key) is not None:
                    state.setdefault(key, []).append(float(operator[key]))
    return reports, rows, parts, state


def progress_stats(query: StreamingQuery) -> dict[str, Any]:
    """Micro-batches with data (freshness.py's fields): count, rows, trigger p50, p95 and max."""
    reports, rows, parts, _ = _with_data(query)
    trigger = parts.get("triggerExecution", [])
    return {
        "progress_reports": reports,
        "batches_with_data": len(rows),
        "duration_ms_p50_by_phase": {k: percentile(v, 50) for k, v in sorted(parts.items())},
        "input_rows_median": statistics.median(rows) if rows else math.nan,
        "trigger_ms_p50": percentile(trigger, 50),
        "trigger_ms_p95": percentile(trigger, 95),
        "trigger_ms_max": max(trigger) if trigger else math.nan,
    }


def progress_details(query: StreamingQuery) -> dict[str, Any]:
    """Micro-batches with data (kafka_freshness.py's fields): trigger summary, p50 and p95 of each phase."""
    reports, rows, parts, state = _with_data(query)
    return {
        "progress_reports": reports,
        "batches_with_data": len(rows),
        "input_rows_median": statistics.median(rows) if rows else math.nan,
        "trigger_ms": summary(parts.get("triggerExecution", [])),
        "duration_ms_p50_by_phase": {k: percentile(v, 50) for k, v in sorted(parts.items())},
        "duration_ms_p95_by_phase": {k: percentile(v, 95) for k, v in sorted(parts.items())},
        "state_p50": {k: percentile(v, 50) for k, v in state.items()},
        "state_last": {k: v[-1] for k, v in state.items()},
    }


class PhaseBreakdown:
    """Collects the jobs' per-micro-batch phase timings (``PhaseTimer`` records) while it is attached.

    Spark's progress reports a foreachBatch body as one ``addBatch``; these name what is inside it.
    ``counters``: read at each record (the end of a body) and added to it as the change since the job's previous
    record, so a value covers one whole micro-batch cycle: planning and compiling the streaming part, then the body
    (``lambda_pipeline.core.jvm.codegen_totals`` gives Spark's code compilations).
    """

    def __init__(self, counters: Callable[[], dict[str, float]] | None = None) -> None:
        import logging

        from lambda_pipeline.core.streaming import MICRO_BATCH_LOGGER

        self.records: list[tuple[str, dict[str, float]]] = []
        outer = self
        last: dict[str, dict[str, float]] = {}

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                job = str(getattr(record, "job", "?"))
                phases = dict(getattr(record, "phases_ms", {}))
                if counters is not None:
                    now = counters()
                    before = last.get(job)
                    if before is not None:
                        phases.update({name: value - before.get(name, 0.0) for name, value in now.items()})
                    last[job] = now
                outer.records.append((job, phases))

        self._logger = logging.getLogger(MICRO_BATCH_LOGGER)
        self._handler = _Handler(logging.DEBUG)

    def attach(self) -> PhaseBreakdown:
        import logging

        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.DEBUG)
        return self

    def detach(self) -> None:
        self._logger.removeHandler(self._handler)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{job: {phase: {p50, p95, n}}} in milliseconds, over micro-batches that had the phase."""
        by_job: dict[str, dict[str, list[float]]] = {}
        for job, phases in self.records:
            for name, ms in phases.items():
                by_job.setdefault(job, {}).setdefault(name, []).append(ms)
        return {
            job: {name: {"p50": percentile(v, 50), "p95": percentile(v, 95), "n": len(v)} for name, v in phases.items()}
            for job, phases in by_job.items()
        }


def print_breakdown(breakdown: dict[str, dict[str, dict[str, float]]]) -> None:
    """Where a micro-batch of each job spends its time, inside Spark's addBatch."""
    for job, phases in sorted(breakdown.items()):
        cells = ", ".join(f"{name} {v['p50']:.0f}/{v['p95']:.0f}" for name, v in sorted(phases.items()))
        print(f"  {job:<8} inside addBatch, p50/p95 ms per micro-batch: {cells}")
