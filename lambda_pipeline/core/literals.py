"""Per-micro-batch values (the ingest tag, the batch id) as columns that do not change the generated code.

Spark compiles each stage to Java and caches the compiled class by its source. A long literal is written
into that source (``5L``), so a value that changes at every micro-batch makes every micro-batch compile its
stages again (6 of ingest's classes per micro-batch, docs/benchmarks.md). An array literal is not
written into the source: Spark passes it to the compiled class as a reference. So the value goes in as a
one-element array, and a generator (which the optimizer never folds) takes it out again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["with_constant"]


def with_constant(frame: DataFrame, name: str, value: int | None, dtype: str = "long") -> DataFrame:
    """``frame`` with the column ``name`` = ``value`` (of type ``dtype``, non-null unless ``value`` is None),
    replacing a column of that name; the same compiled code for every value (see the module's docstring)."""
    column = F.explode(F.array(F.lit(value).cast(dtype)))
    if name not in frame.columns:
        return frame.select("*", column.alias(name))
    hidden = f"_constant_{name}"
    return frame.select("*", column.alias(hidden)).withColumn(name, F.col(hidden)).drop(hidden)
