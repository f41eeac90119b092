"""Serving layer: merged views in the Spark catalog, read-only queries, provenance.

For each view it registers ``serving.<view>`` (batch ⊕ uncovered speed
partials), ``batch.<view>`` and ``speed.<view>`` (one layer alone), and
``master.<table>`` / ``master.quarantine``. Every registration pins a
consistent set of table versions:

- the speed table version ``s`` is read **first**, then the newest coverage
  ``V`` with the batch-view version it names. The speed layer purges tags only
  up to coverages already published, so at ``s`` every tag above ``V`` it has
  processed is still there: no gap, and ``ingest_tag > V`` leaves no double count.

The serving layer never writes a table.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lambda_core.errors import LambdaError, ReadOnlyViolation
from lambda_core.pipeline import Pipeline
from lambda_core.tables import Coverage, Locations, latest_coverage, latest_version, sql_path
from lambda_core.views import INGEST_TAG, INGESTED_AT_MAX, View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["LAYERS", "Pinned", "Provenance", "ServingLayer", "check_read_only"]

LAYERS = ("master", "batch", "speed", "serving")

_READ_ONLY_COMMANDS = re.compile(r"^(Show\w*|Describe\w*|ExplainCommand)$")


def check_read_only(spark: SparkSession, sql: str) -> None:
    """Refuse anything but queries (and SHOW / DESCRIBE / EXPLAIN), by Spark's own parse of it."""
    jvm = spark._jvm  # type: ignore[attr-defined]
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)  # type: ignore[attr-defined]
    except Exception as exc:  # ParseException: report Spark's message, not a Java trace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReadOnlyViolation(f"the query does not parse: {first}") from None
    command = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.plans.logical.Command")
    pending = [plan]
    while pending:
        node = pending.pop()
        name = node.getClass().getSimpleName()
        writes = name in {"InsertIntoStatement", "InsertIntoDir"} or (
            command.isInstance(node) and not _READ_ONLY_COMMANDS.match(name)
        )
        if writes:
            raise ReadOnlyViolation(
                f"refused: '{sql.strip()[:80]}' is a {name} statement; the serving layer is read-only. "
                "Use SELECT (or SHOW/DESCRIBE/EXPLAIN); data changes go through the ingest job."
            )
        children = node.children()
        pending.extend(children.apply(i) for i in range(children.size()))


@dataclass(frozen=True)
class Pinned:
    """The table versions a registration of one view reads."""

    view: str
    coverage: Coverage
    batch_version: int | None
    """None until a batch including this view is published."""
    speed_version: int | None
    """None until the speed layer has created its table."""


@dataclass(frozen=True)
class Provenance:
    """Where an answer comes from and how fresh it is."""

    view: str
    covered_master_version: int
    batch_run_id: str
    batch_published_at: datetime | None
    batch_view_version: int | None
    speed_table_version: int | None
    uncovered_tags: tuple[int, int] | None
    newest_event_window: datetime | None
    newest_ingested_at: datetime | None
    freshness_lag_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


class ServingLayer:
    """Registers the catalog views of a pipeline and answers read-only SQL over them."""

    def __init__(self, spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
        self.spark, self.pipeline, self.locations = spark, pipeline, locations
        self.pinned: dict[str, Pinned] = {}

    # ---- registration ---------------------------------------------------------------

    def _database(self, name: str) -> None:
        if not self.spark.catalog.databaseExists(name):
            location = f"{self.locations.warehouse}/_catalog/{name}.db"
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {name} LOCATION '{location}'")

    def _view(self, qualified: str, sql: str) -> None:
        self.spark.sql(f"CREATE OR REPLACE VIEW {qualified} AS {sql}")

    def _version(self, path: str) -> int | None:
        """Newest version, or None where the layer has not created its table yet."""
        from delta.tables import DeltaTable

        return latest_version(self.spark, path) if DeltaTable.isDeltaTable(self.spark, path) else None

    def pin(self, view: View) -> Pinned:
        speed_version = self._version(self.locations.speed_partials(view.name))
        coverage = (
            latest_coverage(self.spark, self.locations.coverage)
            if self._version(self.locations.coverage) is not None
            else Coverage.none()
        )
        return Pinned(view.name, coverage, coverage.view_versions.get(view.name), speed_version)

    def _empty_states(self, view: View, columns: str, with_tag: bool) -> str:
        empty = self.spark.createDataFrame([], self.pipeline.source.master_schema)
        fields = view.partials(empty, by_tag=with_tag).schema.fields
        typed = ", ".join(f"CAST(NULL AS {f.dataType.simpleString()}) AS `{f.name}`" for f in fields)
        return f"SELECT {columns} FROM (SELECT {typed}) WHERE false"

    def batch_states(self, view: View, pinned: Pinned, columns: str | None = None) -> str:
        """The batch view's states at the pinned version (empty before the first publication)."""
        columns = columns or view.state_select()
        if pinned.batch_version is None:
            return self._empty_states(view, columns, with_tag=False)
        path = sql_path(self.locations.batch_view(view.name))
        return f"SELECT {columns} FROM {path} VERSION AS OF {pinned.batch_version}"

    def speed_states(self, view: View, pinned: Pinned, columns: str | None = None) -> str:
        """The speed partials the pinned coverage does not include, at the pinned speed version."""
        columns = columns or view.state_select()
        if pinned.speed_version is None:
            return self._empty_states(view, columns, with_tag=True)
        return (
            f"SELECT {columns} FROM {sql_path(self.locations.speed_partials(view.name))} "
            f"VERSION AS OF {pinned.speed_version} WHERE {INGEST_TAG} > {pinned.coverage.master_version}"
        )

    def refresh(self) -> dict[str, Pinned]:
        """(Re)register every catalog view at the newest consistent versions."""
        for name in LAYERS:
            self._database(name)
        tables = self.locations.settings.tables
        for name, path in ((tables.master, self.locations.master), (tables.quarantine, self.locations.quarantine)):
            if self._version(path) is None:
                raise LambdaError(
                    f"no Delta table at {path}: nothing was ingested in this work directory yet; "
                    "run 'lambda-pipeline ingest' (or 'demo') with the same --workdir and --config first"
                )
            self._view(f"master.{name}", f"SELECT * FROM {sql_path(path)}")
        for view in self.pipeline.views:
            pinned = self.pin(view)
            batch, speed = self.batch_states(view, pinned), self.speed_states(view, pinned)
            self._view(f"batch.{view.name}", view.select_sql(batch))
            self._view(f"speed.{view.name}", view.select_sql(speed))
            self._view(f"serving.{view.name}", view.select_sql(f"{batch} UNION ALL {speed}"))
            self.pinned[view.name] = pinned
        return self.pinned

    # ---- queries ----------------------------------------------------------------------

    def query(self, sql: str, *, refresh: bool = True) -> DataFrame:
        """Run a read-only SQL query over the catalog views (refreshed first by default)."""
        check_read_only(self.spark, sql)
        if refresh or not self.pinned:
            self.refresh()
        return self.spark.sql(sql)

    def provenance(self, view_name: str) -> Provenance:
        """Versions and freshness behind the current registration of ``serving.<view>``."""
        view = self.pipeline.view(view_name)
        pinned = self.pinned.get(view_name) or self.refresh()[view_name]
        speed = self.speed_states(view, pinned, f"{INGEST_TAG}, {INGESTED_AT_MAX}, window_start")
        stats = self.spark.sql(
            f"SELECT min({INGEST_TAG}) AS lo, max({INGEST_TAG}) AS hi, max({INGESTED_AT_MAX}) AS newest, "
            f"max(window_start) AS newest_window FROM ({speed})"
        ).first()
        batch_window = self.spark.sql(
            f"SELECT max(window_start) AS w FROM ({self.batch_states(view, pinned, 'window_start')})"
        ).first()
        cov = pinned.coverage
        newest_window = max((w for w in (stats.newest_window, batch_window.w) if w is not None), default=None)
        newest_ingested = stats.newest
        lag = None
        if newest_ingested is not None:
            # PySpark returns naive local datetimes; compare with the local clock.
            lag = (datetime.now() - newest_ingested).total_seconds()
        return Provenance(
            view=view_name,
            covered_master_version=cov.master_version,
            batch_run_id=cov.run_id,
            batch_published_at=cov.published_at if cov.run_id != "none" else None,
            batch_view_version=pinned.batch_version,
            speed_table_version=pinned.speed_version,
            uncovered_tags=(int(stats.lo), int(stats.hi)) if stats.lo is not None else None,
            newest_event_window=newest_window,
            newest_ingested_at=newest_ingested,
            freshness_lag_seconds=lag,
        )
