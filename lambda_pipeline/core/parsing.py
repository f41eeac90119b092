"""How a JSON line's fields are read against a source's schema: by ingest, and by a backfill later.

Every field is first read as text, then turned into its declared type with a ``try_`` conversion, so a value of
the wrong type is told apart from an absent one (ingest quarantines the first with a ``wrong_type`` reason).
One definition, so a backfill fills a field exactly as ingest would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql import types as T

if TYPE_CHECKING:
    from pyspark.sql import Column

    from lambda_pipeline.core.views import EventSource

__all__ = ["CORRUPT", "read_fields", "text_schema", "typed_value"]

CORRUPT = "_corrupt"
"""from_json's column for a line that is not a JSON object."""


def typed_value(text: Column, dtype: T.DataType) -> Column:
    """A field's JSON text as ``dtype``, null when it does not fit."""
    if isinstance(dtype, T.StringType):
        return text
    if isinstance(dtype, T.TimestampType):
        return F.try_to_timestamp(text)
    return text.try_cast(dtype)


def text_schema(fields: list[T.StructField]) -> T.StructType:
    """``fields`` all as strings, plus the corrupt-record column: what from_json reads a line with."""
    return T.StructType(
        [T.StructField(f.name, T.StringType(), True) for f in fields] + [T.StructField(CORRUPT, T.StringType(), True)]
    )


def read_fields(raw: Column, source: EventSource, fields: list[str]) -> dict[str, tuple[Column, Column]]:
    """Each of ``fields`` read from a raw JSON line as ingest reads it: (its text, its typed value)."""
    declared = [source.schema[name] for name in fields]
    json = F.from_json(raw, text_schema(declared), {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    return {f.name: (json[f.name], typed_value(json[f.name], f.dataType)) for f in declared}
