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

__all__ = ["CORRUPT", "field_value", "read_fields", "text_schema", "typed_value"]

CORRUPT = "_corrupt"
"""from_json's column for a line that is not a JSON object."""


# Epoch values outside years 1..9999 would overflow Spark's conversion (an error, not a null): refused first.
_EPOCH_RANGE = {
    "epoch_millis": (-62_135_596_800_000, 253_402_300_799_999),
    "epoch_seconds": (-62_135_596_800, 253_402_300_799),
}


def typed_value(text: Column, dtype: T.DataType, time_format: str = "iso8601") -> Column:
    """A field's JSON text as ``dtype``, null when it does not fit.

    A timestamp arrives as ``time_format`` says: an ISO 8601 string (in UTC, the pinned session time zone,
    when it has no offset), or a number of milliseconds or seconds since the epoch. A nested object is read
    with its declared struct type.
    """
    if isinstance(dtype, T.StringType):
        return text
    if isinstance(dtype, T.TimestampType) and time_format in _EPOCH_RANGE:
        low, high = _EPOCH_RANGE[time_format]
        number = text.try_cast("long" if time_format == "epoch_millis" else "decimal(24,6)")
        convert = F.timestamp_millis if time_format == "epoch_millis" else F.timestamp_seconds
        return F.when(number.between(low, high), convert(number))
    if isinstance(dtype, T.TimestampType):
        return F.try_to_timestamp(text)
    if isinstance(dtype, (T.StructType, T.ArrayType, T.MapType)):
        # from_json reads a plain value ("p3") as a struct of nulls: only an object (an array) is one.
        opening = "[" if isinstance(dtype, T.ArrayType) else "{"
        return F.when(F.ltrim(text).startswith(opening), F.from_json(text, dtype.simpleString()))
    return text.try_cast(dtype)


def field_value(source: EventSource, field: T.StructField, text: Column) -> Column:
    """A source field's JSON text as its declared type: the event time as the source says it arrives."""
    time_format = source.time_format if field.name == source.time_column else "iso8601"
    return typed_value(text, field.dataType, time_format)


def text_schema(fields: list[T.StructField]) -> T.StructType:
    """``fields`` all as strings, plus the corrupt-record column: what from_json reads a line with."""
    return T.StructType(
        [T.StructField(f.name, T.StringType(), True) for f in fields] + [T.StructField(CORRUPT, T.StringType(), True)]
    )


def read_fields(raw: Column, source: EventSource, fields: list[str]) -> dict[str, tuple[Column, Column]]:
    """Each of ``fields`` read from a raw JSON line as ingest reads it: (its text, its typed value)."""
    declared = [source.schema[name] for name in fields]
    json = F.from_json(raw, text_schema(declared), {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    return {f.name: (json[f.name], field_value(source, f, json[f.name])) for f in declared}
