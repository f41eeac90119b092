"""batch ⊕ uncovered speed: the serving layer's one computation, as pure DataFrame -> DataFrame functions.

The batch view holds the states of every ingest tag up to the coverage; the speed partials hold states per
ingest tag. Keeping only the speed partials above the coverage (:func:`uncovered`) and merging both layers'
states (:func:`merge`) counts each event exactly once. Reading the tables at a pin is
:mod:`lambda_pipeline.serving_layer.relations`; nothing here reads or writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.views import INGEST_TAG, View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["merge", "states", "uncovered"]


def uncovered(speed_partials: DataFrame, *, covered: int) -> DataFrame:
    """The speed partials of the ingest tags above ``covered``: those the batch view does not include yet."""
    return speed_partials.filter(F.col(INGEST_TAG) > covered)


def states(view: View, partials: DataFrame) -> DataFrame:
    """A layer's partials as the states both layers share (no ingest tag): what :func:`merge` unions."""
    return partials.select(*view.state_column_names())


def merge(view: View, batch_states: DataFrame, speed_states: DataFrame) -> DataFrame:
    """``serving.<view>``: the batch states and the uncovered speed states merged into the view users read."""
    return view.finalize(batch_states.unionByName(speed_states))
