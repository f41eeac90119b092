"""Serving layer: one consistent pin per query, read-only SQL through the guard, provenance.

The names a query can read are ``serving.<view>`` (batch ⊕ uncovered speed partials),
``batch.<view>`` and ``speed.<view>`` (one layer alone), and ``master.<table>`` /
``master.quarantine``. They are not catalog objects: each query is parsed and checked by
:mod:`~lambda_pipeline.serving_layer.guard`, and its names are bound to DataFrames read at **one pin**
(:mod:`~lambda_pipeline.serving_layer.pin`) by :mod:`~lambda_pipeline.serving_layer.relations`;
:mod:`~lambda_pipeline.serving_layer.execution` answers it.

The serving layer never writes a table, and runs user statements in a session of its own where
SQL on files is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.serving_layer import guard
from lambda_pipeline.serving_layer.cache import ServingCache
from lambda_pipeline.serving_layer.execution import execute
from lambda_pipeline.serving_layer.guard import Statement
from lambda_pipeline.serving_layer.pin import Pin, take_pin
from lambda_pipeline.serving_layer.provenance import (
    Provenance,
    provenance_at,
    provenance_of_files,
    with_freshness_lag,
)
from lambda_pipeline.serving_layer.relations import LayerRelations

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["Answer", "ServingLayer"]

SLOTS_PER_VIEW = 8
"""Cache slots a view can fill (a relation per layer, batch states, speed partials, their fingerprint and the
provenance), with room to spare: a pipeline's own names never push out an entry in use."""


@dataclass(frozen=True)
class Answer:
    """A query's result and the one pin it was read at."""

    frame: DataFrame
    pin: Pin
    statement: Statement


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
        self._session = spark.newSession()
        self._session.conf.set("spark.sql.runSQLOnFiles", "false")
        self._cache = ServingCache(max_slots=SLOTS_PER_VIEW * (len(pipeline.views) + 1))
        self.relations = LayerRelations(self._session, pipeline, locations, self._cache, keep_layers=cache_layers)
        self._pin: Pin | None = None
        """The pin statements are answered at with ``new_pin=False``: the newest one taken."""

    @property
    def session(self) -> SparkSession:
        """The session user statements run in (SQL on files off)."""
        return self._session

    @property
    def names(self) -> frozenset[tuple[str, str]]:
        """Every ``(layer, name)`` a query may read."""
        tables = self.locations.settings.tables
        views = [(layer, v.name) for v in self.pipeline.views for layer in ("batch", "speed", "serving")]
        return frozenset([("master", tables.master.lower()), ("master", tables.quarantine.lower()), *views])

    def take_pin(self, as_of: str | None = None, *, views: frozenset[str] | None = None) -> Pin:
        """Take a new pin: the newest consistent versions, or those of publication ``as_of``.

        ``views`` limits the speed tables pinned to those views (a statement that reads one view looks at
        no other view's log); by default every view is pinned.
        """
        wanted = [v for v in self.pipeline.views if views is None or v.name.lower() in views]
        self._pin = take_pin(self._session, self.locations, wanted, as_of)
        return self._pin

    def relation(self, layer: str, name: str, pin: Pin | None = None) -> DataFrame:
        """The DataFrame behind ``<layer>.<name>`` at ``pin`` (the current pin by default)."""
        return self.relations.relation(layer, name, pin or self._pin or self.take_pin())

    def answer(self, sql: str, *, new_pin: bool = True, as_of: str | None = None) -> Answer:
        """Check ``sql`` with the guard, pin, and answer it at that one pin (lazily: a DataFrame).

        ``new_pin=False`` answers at the pin taken last, if it holds every view the statement reads.
        """
        statement = guard.parse(self._session, sql, self.names)
        views = frozenset(name for layer, name in statement.reads if layer != "master")
        if new_pin or as_of or self._pin is None or not views <= {v.lower() for v, _ in self._pin.speed_versions}:
            # Statements that read no view (SHOW TABLES, or master alone) pin every view, for their provenance.
            pin = self.take_pin(as_of, views=views or None)
        else:
            pin = self._pin
        frame = execute(self._session, statement, pin, lambda layer, name: self.relation(layer, name, pin), self.names)
        return Answer(frame, pin, statement)

    def query(self, sql: str, *, new_pin: bool = True, as_of: str | None = None) -> DataFrame:
        """The DataFrame of :meth:`answer`."""
        return self.answer(sql, new_pin=new_pin, as_of=as_of).frame

    def provenances(self, answer: Answer) -> list[Provenance]:
        """The provenance of every view ``answer`` read (of every view when it read none, as SHOW TABLES)."""
        pinned = {name for name, _ in answer.pin.speed_versions}
        return [self.provenance(view.name, answer.pin) for view in self.pipeline.views if view.name in pinned]

    def provenance(self, view_name: str, pin: Pin | None = None) -> Provenance:
        """Versions and freshness behind ``serving.<view>`` at ``pin`` (the current pin by default).

        In a long-lived server, from the speed table's log and a batch figure kept per publication: no Spark job
        after an ingest commit. Elsewhere, two small Spark jobs per view and pin. Either way the answer is kept for
        the newest pin asked for. Its freshness lag is of the time of asking.
        """
        pin = pin or self._pin or self.take_pin()

        def compute() -> Provenance:
            view = self.pipeline.view(view_name)
            files = self.relations.speed_files(view, pin)
            if files is not None:
                known = provenance_of_files(view_name, pin, files, self.relations.batch_newest_window(view, pin))
                if known is not None:
                    return known
            batch, speed = self.relations.batch_states(view, pin), self.relations.speed_partials(view, pin)
            return provenance_at(view_name, pin, batch, speed)

        return with_freshness_lag(self._cache.value(("provenance", view_name), pin.key, compute))
