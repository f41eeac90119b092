"""The speed layer's transforms, pure: what a tag's partial states are, and which events no batch covers.

Nothing here reads or writes a table; the writer (:mod:`.writer`) and the catch-up (:mod:`.catch_up`) do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.views import INGEST_TAG, View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["SPEED_PARTITIONING", "tag_partials", "uncovered"]

SPEED_PARTITIONING = (INGEST_TAG,)
"""Speed tables are partitioned by ingest tag: purging covered tags drops whole partitions."""


def tag_partials(view: View, events: DataFrame) -> DataFrame:
    """``view``'s partial states of ``events``, per tag, in one file per tag: a tag's partials are small, and
    serving reads every uncovered file."""
    return view.partials(events, by_tag=True).coalesce(1)


def uncovered(master: DataFrame, covered: int) -> DataFrame:
    """The events of master that a batch covering tags up to ``covered`` does not include."""
    return master.filter(F.col(INGEST_TAG) > covered)
