"""Serving layer: one consistent pin per query, read-only SQL through the guard, provenance.

The names a query can read are ``serving.<view>`` (batch ⊕ uncovered speed partials),
``batch.<view>`` and ``speed.<view>`` (one layer alone), and ``master.<table>`` /
``master.quarantine``. They are not catalog objects: each query is parsed and checked by
:mod:`lambda_pipeline.serving_layer.guard`, and its names are bound to DataFrames read at **one pin**, a consistent
set of table versions taken in this order:

1. every speed table's version ``s``, **first**;
2. then the newest coverage ``V`` (and the batch-view versions it names). The speed layer purges tags
   only up to coverages already published, so at ``s`` every tag above ``V`` it has processed is
   still there: no gap, and ``ingest_tag > V`` leaves no double count;
3. then master and quarantine, so that master holds every tag the speed partials and the batch saw.

``--as-of PUBLICATION`` pins the coverage row of that publication and, for every other table, the
newest version committed before that row was: the state served right after the publication.

The serving layer never writes a table, and runs user statements in a session of its own where
SQL on files is off.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql import types as T

from lambda_pipeline.core.config import duration_seconds
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import analyzed_plan, dataset_of_plan, frame_of_dataset
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import (
    FINGERPRINT_PROPERTY,
    NOTHING_INGESTED,
    QUARANTINE_SCHEMA,
    Coverage,
    Locations,
    latest_coverage,
    table_property,
    table_version,
)
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT_MAX, WINDOW_START, View
from lambda_pipeline.serving_layer import guard
from lambda_pipeline.serving_layer.binding import bind, check_resolved
from lambda_pipeline.serving_layer.guard import LAYERS, Statement

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["Answer", "Pin", "Pinned", "Provenance", "ServingLayer"]


@dataclass(frozen=True)
class Pinned:
    """The table versions one view is read at."""

    view: str
    coverage: Coverage
    batch_version: int | None
    """None until a batch including this view is published."""
    speed_version: int | None
    """None until the speed layer has created its table."""


@dataclass(frozen=True)
class Pin:
    """One consistent set of table versions: everything one query reads."""

    coverage: Coverage
    coverage_version: int | None
    master_version: int
    quarantine_version: int | None
    speed_versions: tuple[tuple[str, int | None], ...]
    as_of: str | None = None
    """The publication asked for with ``--as-of``; None for the newest state."""

    def __getitem__(self, view: str) -> Pinned:
        return Pinned(view, self.coverage, self.coverage.view_versions.get(view), dict(self.speed_versions)[view])

    def as_dict(self) -> dict[str, Any]:
        return {
            "publication": self.coverage.run_id,
            "as_of": self.as_of,
            "covered_master_version": self.coverage.master_version,
            "coverage_table_version": self.coverage_version,
            "master_table_version": self.master_version,
            "quarantine_table_version": self.quarantine_version,
            "batch_view_versions": dict(self.coverage.view_versions),
            "speed_table_versions": dict(self.speed_versions),
        }


@dataclass(frozen=True)
class Provenance:
    """Where an answer about one view comes from and how fresh it is."""

    view: str
    covered_master_version: int
    batch_run_id: str
    batch_published_at: datetime | None
    batch_view_version: int | None
    speed_table_version: int | None
    master_table_version: int
    uncovered_tags: tuple[int, int] | None
    newest_event_window: datetime | None
    newest_ingested_at: datetime | None
    freshness_lag_seconds: float | None
    batch_restores: str | None = None
    """Set when the publication served is a rollback: the run id of the earlier one it serves again."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


@dataclass(frozen=True)
class Answer:
    """A query's result and the one pin it was read at."""

    frame: DataFrame
    pin: Pin
    statement: Statement


_TEXT = T.StringType()


class ServingLayer:
    """Answers read-only SQL over a pipeline's layers, each query at one consistent pin.

    The only way in for user statements is :meth:`answer` (and :meth:`query`, its DataFrame):
    both go through the guard, and run in a session of their own with SQL on files off.
    """

    def __init__(
        self, spark: SparkSession, pipeline: Pipeline, locations: Locations, *, cache_layers: bool = False
    ) -> None:
        """``cache_layers``: keep each view's batch states and uncovered speed partials of the newest pin in
        memory (a long-lived server's choice: every merged query reads both, and they change only with a
        publication or an ingest commit)."""
        self.pipeline, self.locations = pipeline, locations
        self._cache_layers = cache_layers
        self._cache: dict[tuple[str, str], tuple[tuple[int, ...], DataFrame]] = {}
        self._cache_lock = threading.Lock()
        self._session = spark.newSession()
        self._session.conf.set("spark.sql.runSQLOnFiles", "false")
        self._pin: Pin | None = None
        self._relations: dict[tuple[str, str], DataFrame] = {}
        self._relations_pin: Pin | None = None
        # Provenance of the newest pin asked for, per view (its freshness lag is recomputed on every call).
        self._provenance: tuple[str, dict[str, Provenance]] = ("", {})
        # The fingerprint property of each speed table, by path: (the table version it was read at, value).
        self._fingerprints: dict[str, tuple[int | None, str | None]] = {}

    @property
    def session(self) -> SparkSession:
        """The session user statements run in (SQL on files off)."""
        return self._session

    # ---- names ----------------------------------------------------------------------------

    @property
    def names(self) -> frozenset[tuple[str, str]]:
        """Every ``(layer, name)`` a query may read."""
        tables = self.locations.settings.tables
        views = [(layer, v.name) for v in self.pipeline.views for layer in ("batch", "speed", "serving")]
        return frozenset([("master", tables.master.lower()), ("master", tables.quarantine.lower()), *views])

    # ---- pins -----------------------------------------------------------------------------

    def refresh(self, as_of: str | None = None, *, views: frozenset[str] | None = None) -> Pin:
        """Take a new pin: the newest consistent versions, or those of publication ``as_of``.

        ``views`` limits the speed tables pinned to those views (a statement that reads one view looks at
        no other view's log); by default every view is pinned.
        """
        wanted = [v for v in self.pipeline.views if views is None or v.name.lower() in views]
        self._pin = self._pin_as_of(as_of, wanted) if as_of else self._pin_newest(wanted)
        return self._pin

    def _pin_newest(self, views: list[View]) -> Pin:
        spark, loc = self._session, self.locations
        speed = tuple((v.name, table_version(spark, loc.speed_partials(v.name))) for v in views)
        coverage_version = table_version(spark, loc.coverage)
        coverage = (
            Coverage.none() if coverage_version is None else latest_coverage(spark, loc.coverage, coverage_version)
        )
        master = self._require(loc.master, table_version(spark, loc.master))
        return Pin(coverage, coverage_version, master, table_version(spark, loc.quarantine), speed)

    def _require(self, path: str, version: int | None) -> int:
        if version is None:
            raise LambdaError(f"no Delta table at {path}: {NOTHING_INGESTED}")
        return version

    def _pin_as_of(self, publication: str, views: list[View]) -> Pin:
        """The pin served right after ``publication``: its coverage row, every other table as it was then."""
        spark, loc = self._session, self.locations
        if table_version(spark, loc.coverage) is None:
            raise LambdaError(f"--as-of {publication}: no batch was published in this work directory yet")
        rows = spark.read.format("delta").load(loc.coverage).collect()
        matches = [r for r in rows if r.run_id.startswith(publication)]
        if len(matches) != 1:
            newest = sorted(rows, key=lambda r: r.published_at)[-5:]
            listed = ", ".join(f"{r.run_id[:8]} ({r.published_at:%Y-%m-%d %H:%M:%S})" for r in reversed(newest))
            why = "matches several publications" if matches else "names no publication"
            raise LambdaError(f"--as-of {publication}: {why}; the newest are: {listed or 'none'}")
        row = matches[0]
        retention = self.locations.settings.maintenance.retention
        if (datetime.now() - row.published_at).total_seconds() >= duration_seconds(retention):
            raise LambdaError(
                f"--as-of {publication}: published {row.published_at:%Y-%m-%d %H:%M}, longer ago than "
                f"maintenance.retention ({retention}): VACUUM may have deleted files its pin reads; "
                "raise the retention to keep answering that far back"
            )
        coverage = Coverage(
            row.run_id, int(row.master_version), dict(row.view_versions), int(row.master_events), row.published_at
        )
        coverage_version = self._first_version_with(loc.coverage, row.run_id)
        committed = _commit_time(spark, loc.coverage, coverage_version)
        speed = tuple((v.name, _version_at(spark, loc.speed_partials(v.name), committed)) for v in views)
        master = self._require(loc.master, _version_at(spark, loc.master, committed))
        quarantine = _version_at(spark, loc.quarantine, committed)
        return Pin(coverage, coverage_version, master, quarantine, speed, as_of=publication)

    def _first_version_with(self, path: str, run_id: str) -> int:
        """The coverage-table version that appended ``run_id``'s row (a binary search; rows are never removed)."""
        reader = self._session.read.format("delta")
        lo, hi = 0, self._require(path, table_version(self._session, path))
        while lo < hi:
            mid = (lo + hi) // 2
            found = reader.option("versionAsOf", mid).load(path).filter(F.col("run_id") == run_id).limit(1).count()
            lo, hi = (lo, mid) if found else (mid + 1, hi)
        return lo

    # ---- relations at a pin -------------------------------------------------------------------

    def relation(self, layer: str, name: str, pin: Pin | None = None) -> DataFrame:
        """The DataFrame behind ``<layer>.<name>`` at ``pin`` (the current pin by default)."""
        pin = pin or self._pin or self.refresh()
        if self._relations_pin != pin:
            self._relations, self._relations_pin = {}, pin
        key = (layer, name.lower())
        if key not in self._relations:
            self._relations[key] = self._build(layer, name.lower(), pin)
        return self._relations[key]

    def _build(self, layer: str, name: str, pin: Pin) -> DataFrame:
        reader = self._session.read.format("delta")
        tables = self.locations.settings.tables
        if layer == "master":
            if name == tables.master.lower():
                return reader.option("versionAsOf", pin.master_version).load(self.locations.master)
            if pin.quarantine_version is None:
                return self._session.createDataFrame([], QUARANTINE_SCHEMA)
            return reader.option("versionAsOf", pin.quarantine_version).load(self.locations.quarantine)
        view = next(v for v in self.pipeline.views if v.name.lower() == name)
        self._check_definition(view, layer, pin)
        if layer == "batch":
            return view.finalize(self.batch_states(view, pin))
        if layer == "speed":
            return view.finalize(self.speed_states(view, pin))
        return view.finalize(self.batch_states(view, pin).unionByName(self.speed_states(view, pin)))

    def _check_definition(self, view: View, layer: str, pin: Pin) -> None:
        """Refuse to read states of another definition than the view's (never merge two), or a new view
        whose states are not computed yet: the message says why and what to run."""
        refresh = f"run 'lambda-pipeline refresh --view {view.name}' (or restart ingest, then run a batch)"
        published = pin.coverage.view_fingerprints.get(view.name)
        if layer in {"batch", "serving"} and published is not None and published != view.fingerprint:
            raise LambdaError(
                f"{layer}.{view.name}: the view's definition changed since publication {pin.coverage.run_id[:8]} "
                f"(fingerprint {published} there, {view.fingerprint} now), whose batch view holds the old "
                f"one; {refresh}"
            )
        if layer not in {"speed", "serving"}:
            return
        path = self.locations.speed_partials(view.name)
        version = dict(pin.speed_versions).get(view.name)
        known = self._fingerprints.get(path)
        if known is not None and known[0] == version:  # read once per speed version, not per query
            stamped = known[1]
        else:
            stamped = table_property(self._session, path, FINGERPRINT_PROPERTY)
            self._fingerprints[path] = (version, stamped)
        if stamped is not None and stamped != view.fingerprint:
            raise LambdaError(
                f"{layer}.{view.name}: the speed partials were computed with another definition of the view "
                f"(fingerprint {stamped} there, {view.fingerprint} now); {refresh}"
            )
        uncomputed = dict(pin.speed_versions).get(view.name) is None and view.name not in pin.coverage.view_versions
        if uncomputed and pin.master_version > 0:
            raise LambdaError(
                f"{layer}.{view.name}: the view is new and not computed yet over the "
                f"{pin.master_version} master commit(s) that exist; {refresh}"
            )

    def _states(self, view: View, frame: DataFrame) -> DataFrame:
        return frame.select(*view.state_column_names())

    def _empty_partials(self, view: View, *, by_tag: bool) -> DataFrame:
        return self._session.createDataFrame([], view.partial_schema(by_tag=by_tag))

    def batch_states(self, view: View, pin: Pin) -> DataFrame:
        """The batch view's states at the pinned version (empty before the first publication)."""
        version = pin.coverage.view_versions.get(view.name)
        if version is None:
            return self._states(view, self._empty_partials(view, by_tag=False))
        path = self.locations.batch_view(view.name)
        return self._kept(
            ("batch", view.name),
            (version,),
            lambda: self._states(view, self._session.read.format("delta").option("versionAsOf", version).load(path)),
        )

    def _kept(self, slot: tuple[str, str], version: tuple[int, ...], build: Callable[[], DataFrame]) -> DataFrame:
        """``build()``, kept in memory per ``slot`` while ``version`` stays the same (with ``cache_layers``).

        One frame per slot: a new version replaces the old one, and queries still running on the old one
        recompute what they miss from the same pinned Delta versions, so answers never change.
        """
        if not self._cache_layers:
            return build()
        with self._cache_lock:
            cached = self._cache.get(slot)
            if cached is not None and cached[0] == version:
                return cached[1]
            frame = build().persist()
            self._cache[slot] = (version, frame)
        if cached is not None:
            cached[1].unpersist()
        return frame

    def speed_partials(self, view: View, pin: Pin) -> DataFrame:
        """The speed partials the pinned coverage does not include, at the pinned speed version."""
        version = dict(pin.speed_versions)[view.name]
        if version is None:
            return self._empty_partials(view, by_tag=True)
        path = self.locations.speed_partials(view.name)
        covered = pin.coverage.covered_for(view.name)
        return self._kept(
            ("speed", view.name),
            (version, covered),
            lambda: (
                self._session.read.format("delta")
                .option("versionAsOf", version)
                .load(path)
                .filter(F.col(INGEST_TAG) > covered)
            ),
        )

    def speed_states(self, view: View, pin: Pin) -> DataFrame:
        return self._states(view, self.speed_partials(view, pin))

    # ---- queries ----------------------------------------------------------------------------

    def answer(self, sql: str, *, refresh: bool = True, as_of: str | None = None) -> Answer:
        """Check ``sql`` with the guard, pin, and answer it at that one pin (lazily: a DataFrame)."""
        statement = guard.parse(self._session, sql, self.names)
        views = frozenset(name for layer, name in statement.reads if layer != "master")
        if refresh or as_of or self._pin is None or not views <= {v.lower() for v, _ in self._pin.speed_versions}:
            # Statements that read no view (SHOW TABLES, or master alone) pin every view, for their provenance.
            pin = self.refresh(as_of, views=views or None)
        else:
            pin = self._pin
        return Answer(self._run(statement, pin), pin, statement)

    def query(self, sql: str, *, refresh: bool = True, as_of: str | None = None) -> DataFrame:
        """The DataFrame of :meth:`answer`."""
        return self.answer(sql, refresh=refresh, as_of=as_of).frame

    def _run(self, statement: Statement, pin: Pin) -> DataFrame:
        kind = statement.kind
        if kind in {"query", "explain", "describe_query"}:
            dataset = self._bound(statement, pin)
            if kind == "query":
                return frame_of_dataset(self._session, dataset)
            if kind == "explain":
                text = dataset.queryExecution().explainString(statement.explain_mode)
                return self._rows([(text,)], ["plan"])
            return self._describe(_schema(dataset))
        if kind in {"describe", "describe_column", "show_columns"}:
            assert statement.relation is not None
            schema = self.relation(*statement.relation, pin=pin).schema
            if kind == "show_columns":
                return self._rows([(f.name,) for f in schema.fields], ["col_name"])
            if kind == "describe_column":
                wanted = (statement.column or "").lower()
                field = next((f for f in schema.fields if f.name.lower() == wanted), None)
                if field is None:
                    raise LambdaError(f"{'.'.join(statement.relation)} has no column '{statement.column}'")
                info = [("col_name", field.name), ("data_type", field.dataType.simpleString()), ("comment", None)]
                return self._rows(info, ["info_name", "info_value"])
            described = self._describe(schema)
            if not statement.extended:
                return described
            extra = [("", "", None), ("# Pinned versions", "", None)]
            extra += [(key, str(value), None) for key, value in pin.as_dict().items()]
            return described.unionByName(self._rows(extra, ["col_name", "data_type", "comment"]))
        if kind == "show_tables":
            names = sorted(n for n in self.names if statement.namespace in (None, n[0]))
            rows = [(layer, name, False) for layer, name in names if _matches(statement.pattern, name)]
            schema = T.StructType(
                [
                    T.StructField("namespace", _TEXT),
                    T.StructField("tableName", _TEXT),
                    T.StructField("isTemporary", T.BooleanType()),
                ]
            )
            return self._session.createDataFrame(rows, schema)
        layers = [(layer,) for layer in LAYERS if _matches(statement.pattern, layer)]
        return self._rows(layers, ["namespace"])

    def _bound(self, statement: Statement, pin: Pin) -> Any:
        """The statement's plan bound to the pinned relations, analysed, and checked once resolved."""
        relations = {name: self.relation(*name, pin=pin) for name in statement.reads}
        plans = {name: analyzed_plan(frame) for name, frame in relations.items()}
        bound = bind(self._session, statement.plan, plans)
        dataset = dataset_of_plan(self._session, bound)
        check_resolved(statement.sql, dataset.queryExecution().analyzed(), list(plans.values()))
        return dataset

    def _rows(self, rows: list[tuple[Any, ...]], columns: list[str]) -> DataFrame:
        return self._session.createDataFrame(rows, T.StructType([T.StructField(c, _TEXT) for c in columns]))

    def _describe(self, schema: T.StructType) -> DataFrame:
        rows = [(f.name, f.dataType.simpleString(), None) for f in schema.fields]
        return self._rows(rows, ["col_name", "data_type", "comment"])

    # ---- provenance -------------------------------------------------------------------------

    def provenances(self, answer: Answer) -> list[Provenance]:
        """The provenance of every view ``answer`` read (of every view when it read none, as SHOW TABLES)."""
        pinned = {name for name, _ in answer.pin.speed_versions}
        return [self.provenance(view.name, answer.pin) for view in self.pipeline.views if view.name in pinned]

    def provenance(self, view_name: str, pin: Pin | None = None) -> Provenance:
        """Versions and freshness behind ``serving.<view>`` at ``pin`` (the current pin by default).

        Two small Spark jobs per view and pin, so the answer is kept for the newest pin asked for: a server
        answering many queries between two commits computes it once.
        """
        pin = pin or self._pin or self.refresh()
        key = json.dumps(pin.as_dict(), sort_keys=True, default=str)
        cached_key, cached = self._provenance
        known = cached.get(view_name) if cached_key == key else None
        if known is None:
            known = self._provenance_at(view_name, pin)
            self._provenance = (key, {**(cached if cached_key == key else {}), view_name: known})
        lag = None
        if known.newest_ingested_at is not None:
            # PySpark returns naive local datetimes; compare with the local clock.
            lag = (datetime.now() - known.newest_ingested_at).total_seconds()
        return replace(known, freshness_lag_seconds=lag)

    def _provenance_at(self, view_name: str, pin: Pin) -> Provenance:
        view = self.pipeline.view(view_name)
        speed = self.speed_partials(view, pin)
        stats = speed.agg(
            F.min(INGEST_TAG).alias("lo"),
            F.max(INGEST_TAG).alias("hi"),
            F.max(INGESTED_AT_MAX).alias("newest"),
            F.max(WINDOW_START).alias("newest_window"),
        ).first()
        batch_window = self.batch_states(view, pin).agg(F.max(WINDOW_START).alias("w")).first()
        assert stats is not None and batch_window is not None
        cov = pin.coverage
        newest_window = max((w for w in (stats.newest_window, batch_window.w) if w is not None), default=None)
        newest_ingested = stats.newest
        return Provenance(
            view=view_name,
            covered_master_version=cov.master_version,
            batch_run_id=cov.run_id,
            batch_published_at=cov.published_at if cov.run_id != "none" else None,
            batch_view_version=cov.view_versions.get(view_name),
            speed_table_version=pin[view_name].speed_version,
            master_table_version=pin.master_version,
            uncovered_tags=(int(stats.lo), int(stats.hi)) if stats.lo is not None else None,
            newest_event_window=newest_window,
            newest_ingested_at=newest_ingested,
            freshness_lag_seconds=None,  # set by provenance(), at the time of asking
            batch_restores=cov.restores,
        )


def _schema(dataset: Any) -> T.StructType:
    return T.StructType.fromJson(json.loads(dataset.schema().json()))


def _matches(pattern: str | None, name: str) -> bool:
    """Spark's SHOW ... LIKE pattern: ``*`` is any text, ``|`` separates alternatives, case-insensitive."""
    if pattern is None:
        return True
    for alternative in pattern.split("|"):
        try:
            if re.fullmatch(alternative.strip().replace("*", ".*"), name, re.IGNORECASE):
                return True
        except re.error:
            continue
    return False


def _commit_time(spark: SparkSession, path: str, version: int) -> datetime:
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).history().filter(F.col("version") == version).select("timestamp").first()
    if row is None:
        raise LambdaError(f"{path}: version {version} is no longer in the table's history")
    committed: datetime = row.timestamp
    return committed


def _version_at(spark: SparkSession, path: str, when: datetime) -> int | None:
    """The newest version of the table at ``path`` committed at or before ``when`` (None if none was)."""
    from delta.tables import DeltaTable

    if table_version(spark, path) is None:
        return None
    row = (
        DeltaTable.forPath(spark, path)
        .history()
        .filter(F.col("timestamp") <= F.lit(when))
        .agg(F.max("version").alias("v"))
        .first()
    )
    return None if row is None or row.v is None else int(row.v)
