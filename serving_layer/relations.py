"""The relations of each layer at a pin: the DataFrame behind ``<layer>.<name>``, read at the pinned versions.

``serving.<view>`` is :func:`~lambda_pipeline.serving_layer.merge.merge` of the batch states and the uncovered
speed states; ``batch.<view>`` and ``speed.<view>`` are one layer alone; ``master.*`` the raw tables. A view
whose batch view or speed partials hold another definition than the view's is refused, never merged.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import FINGERPRINT_PROPERTY, QUARANTINE_SCHEMA, table_property
from lambda_pipeline.core.views import View
from lambda_pipeline.serving_layer.cache import ServingCache
from lambda_pipeline.serving_layer.merge import merge, states, uncovered
from lambda_pipeline.serving_layer.pin import Pin
from lambda_pipeline.serving_layer.provenance import newest_window
from lambda_pipeline.serving_layer.speed_files import SpeedFile, SpeedFileIndex
from lambda_pipeline.serving_layer.speed_frames import SpeedFrames

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["LayerRelations"]


class LayerRelations:
    """Builds each layer's relations at a pin, and keeps them in ``cache``.

    ``keep_layers``: also keep each view's batch states and uncovered speed partials in memory (a
    long-lived server's choice: every merged query reads both, and they change only with a publication or
    an ingest commit). The speed partials are then read per tag from the files the table's log names
    (:mod:`.speed_files`, :mod:`.speed_frames`): a commit costs the read of its own file.
    """

    def __init__(
        self, session: SparkSession, pipeline: Pipeline, locations: Locations, cache: ServingCache, *, keep_layers: bool
    ) -> None:
        self.session, self.pipeline, self.locations = session, pipeline, locations
        self._cache, self._keep_layers = cache, keep_layers
        self._indexes: dict[str, SpeedFileIndex] = {}
        self._frames: dict[str, SpeedFrames] = {}

    def relation(self, layer: str, name: str, pin: Pin) -> DataFrame:
        """The DataFrame behind ``<layer>.<name>`` at ``pin``."""
        name = name.lower()
        return self._cache.value(("relation", layer, name), pin.key, lambda: self._build(layer, name, pin))

    def _build(self, layer: str, name: str, pin: Pin) -> DataFrame:
        reader = self.session.read.format("delta")
        tables = self.locations.settings.tables
        if layer == "master":
            if name == tables.master.lower():
                return reader.option("versionAsOf", pin.master_version).load(self.locations.master)
            if pin.quarantine_version is None:
                return self.session.createDataFrame([], QUARANTINE_SCHEMA)
            return reader.option("versionAsOf", pin.quarantine_version).load(self.locations.quarantine)
        view = next(v for v in self.pipeline.views if v.name.lower() == name)
        self._check_definition(view, layer, pin)
        if layer == "batch":
            return view.finalize(self.batch_states(view, pin))
        if layer == "speed":
            return view.finalize(self.speed_states(view, pin))
        return merge(view, self.batch_states(view, pin), self.speed_states(view, pin))

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
        stamped = self._speed_fingerprint(view, pin)
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

    def _speed_fingerprint(self, view: View, pin: Pin) -> str | None:
        """The definition the view's speed partials were computed with: read once per speed table version."""
        path = self.locations.speed_partials(view.name)
        key = (path, pin.table_id(path), dict(pin.speed_versions).get(view.name))
        return self._cache.value(
            ("speed fingerprint", view.name), key, lambda: table_property(self.session, path, FINGERPRINT_PROPERTY)
        )

    def _empty_partials(self, view: View, *, by_tag: bool) -> DataFrame:
        return self.session.createDataFrame([], view.partial_schema(by_tag=by_tag))

    def batch_states(self, view: View, pin: Pin) -> DataFrame:
        """The batch view's states at the pinned version (empty before the first publication)."""
        version = pin.coverage.view_versions.get(view.name)
        if version is None:
            return states(view, self._empty_partials(view, by_tag=False))
        path = self.locations.batch_view(view.name)

        def read() -> DataFrame:
            return states(view, self.session.read.format("delta").option("versionAsOf", version).load(path))

        if not self._keep_layers:
            return read()
        # The publication names the batch view's version: the coverage table's id stands for the batch view's.
        key = (path, pin.table_id(self.locations.coverage), version)
        return self._cache.frame(("batch states", view.name), key, read)

    def batch_newest_window(self, view: View, pin: Pin) -> datetime | None:
        """The newest window of the pinned batch view (one small job per publication, kept under its version)."""
        version = pin.coverage.view_versions.get(view.name)
        if version is None:
            return None
        key = (self.locations.batch_view(view.name), pin.table_id(self.locations.coverage), version)
        slot = ("batch newest window", view.name)
        return self._cache.value(slot, key, lambda: newest_window(self.batch_states(view, pin)))

    def speed_partials(self, view: View, pin: Pin) -> DataFrame:
        """The speed partials the pinned coverage does not include, at the pinned speed version."""
        version = dict(pin.speed_versions)[view.name]
        if version is None:
            return self._empty_partials(view, by_tag=True)
        path = self.locations.speed_partials(view.name)
        covered = pin.coverage.covered_for(view.name)
        files = self.speed_files(view, pin)
        if files is not None:
            frames = self._frames.get(view.name)
            if frames is None or frames.view != view:
                frames = self._frames[view.name] = SpeedFrames(self.session, view, path)
            return frames.partials(files, covered)

        def read() -> DataFrame:
            partials = self.session.read.format("delta").option("versionAsOf", version).load(path)
            return uncovered(partials, covered=covered)

        if not self._keep_layers:
            return read()
        return self._cache.frame(("speed partials", view.name), (path, pin.table_id(path), version, covered), read)

    def speed_files(self, view: View, pin: Pin) -> list[SpeedFile] | None:
        """The speed table's live files at the pin, from its log, in a long-lived server; None elsewhere, and
        where the log holds what :class:`SpeedFileIndex` does not follow (then Delta's reader reads it)."""
        version = dict(pin.speed_versions).get(view.name)
        if not self._keep_layers or version is None:
            return None
        path = self.locations.speed_partials(view.name)
        index = self._indexes.get(path)
        if index is None:
            index = self._indexes[path] = SpeedFileIndex(self.session, path)
        return index.live(version, pin.table_id(path))

    def speed_states(self, view: View, pin: Pin) -> DataFrame:
        return states(view, self.speed_partials(view, pin))
