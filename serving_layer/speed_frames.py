"""A view's uncovered speed partials in a long-lived server: read per tag, from the files the log names.

Why: each ingest commit adds one file per view. Re-reading the whole uncovered speed table at each commit costs a
Delta file-list job and a read of every uncovered tag, on the cores ingest needs; here a commit costs the read of
its one file. Each tag's frame is kept in memory; past :data:`FOLD_AT` of them they fold into one block (one small
job over what is in memory), so that a query unions a bounded number of frames however many tags are uncovered.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.views import INGEST_TAG, View
from lambda_pipeline.serving_layer.merge import uncovered
from lambda_pipeline.serving_layer.speed_files import SpeedFile

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["FOLD_AT", "SpeedFrames"]

FOLD_AT = 16
"""Tags read together from their files, past which they fold into the block kept in memory."""

_Key = tuple[int, frozenset[str]]
"""A tag and the files that hold it: rows read from them are valid while exactly those files are live."""


@dataclass(frozen=True, eq=False)
class _Part:
    keys: frozenset[_Key]
    frame: DataFrame


class SpeedFrames:
    """The uncovered speed partials of one view: a block kept in memory, and the newest tags read from their files
    (kept in memory too, until the next commit changes them). A query reads two cached relations. Thread-safe."""

    def __init__(self, session: SparkSession, view: View, table: str) -> None:
        self.session, self.view, self.table = session, view, table
        self._lock = threading.Lock()
        self._block: _Part | None = None
        self._recent: _Part | None = None

    def partials(self, files: list[SpeedFile], covered: int) -> DataFrame:
        """The partials of the tags above ``covered`` held by ``files`` (the live files at the pinned version)."""
        by_tag: dict[int, set[str]] = defaultdict(set)
        for file in files:
            if file.tag > covered:
                by_tag[file.tag].add(file.path)
        live = frozenset((tag, frozenset(paths)) for tag, paths in by_tag.items())
        with self._lock:
            block, recent = self._block, self._recent
            if block is not None and any(key not in live and key[0] > covered for key in block.keys):
                block = None  # a tag the block holds was rewritten (a rebuild): read it again
            rest = live - (block.keys if block is not None else frozenset())
            if recent is not None and recent.keys != rest:
                if len(rest) > FOLD_AT:
                    block, rest = self._fold(block, recent, rest, covered), frozenset()
                recent = None
            if recent is None and rest:
                recent = _Part(rest, self._read(rest).persist())
            kept = (block, recent)
            released = [old.frame for old in (self._block, self._recent) if old is not None and old not in kept]
            self._block, self._recent = block, recent
        for frame in released:
            frame.unpersist()
        parts = [part.frame for part in (block, recent) if part is not None]
        if not parts:
            return self.session.createDataFrame([], self.view.partial_schema(by_tag=True))
        # One task reads both: each is small, and a task per partition costs more than its rows.
        return uncovered(functools.reduce(lambda a, b: a.union(b), parts).coalesce(1), covered=covered)

    def _read(self, keys: frozenset[_Key]) -> DataFrame:
        """The partials of ``keys``, read from their Parquet files (the tag from each file's folder)."""
        schema = self.view.partial_schema(by_tag=True)
        paths = sorted(SpeedFile.absolute_path(self.table, path) for key in keys for path in key[1])
        frame = self.session.read.schema(schema).option("basePath", self.table).parquet(*paths)
        return frame.select(*schema.fieldNames())

    def _fold(self, block: _Part | None, recent: _Part, rest: frozenset[_Key], covered: int) -> _Part:
        """A new block: the old one without the tags now covered, the recent tags and the new ones, in memory
        before the old parts are released (a query planned on them meanwhile still reads them)."""
        sources = [] if block is None else [uncovered(block.frame, covered=covered)]
        kept = recent.keys & rest
        if kept:
            sources.append(recent.frame.filter(F.col(INGEST_TAG).isin(sorted(key[0] for key in kept))))
        if rest - kept:
            sources.append(self._read(rest - kept))
        frame = functools.reduce(lambda a, b: a.union(b), sources).coalesce(1).persist()
        frame.count()
        held = (block.keys if block is not None else frozenset()) | rest
        return _Part(frozenset(key for key in held if key[0] > covered), frame)
