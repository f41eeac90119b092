"""A pipeline's source of events: their schema, identity and event time, and the columns the pipeline adds.

>>> import lambda_pipeline as lp
>>> from pyspark.sql import types as T
>>> readings = lp.EventSource(
...     "readings",
...     T.StructType([T.StructField("reading_id", T.StringType()), T.StructField("ts", T.TimestampType())]),
...     id_column="reading_id",
...     time_column="ts",
...     time_format="epoch_millis",
... )
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import types as T

from lambda_pipeline.core.errors import ViewDefinitionError

__all__ = [
    "INGESTED_AT",
    "INGESTED_AT_MAX",
    "INGEST_TAG",
    "RAW",
    "RESERVED",
    "SOURCE_FILE",
    "TIME_FORMATS",
    "WINDOW_END",
    "WINDOW_START",
    "EventSource",
    "TimeFormat",
    "quote",
]

INGEST_TAG = "ingest_tag"
"""Master-table commit version that brought the event in: the unit of coverage."""
INGESTED_AT = "ingested_at"
SOURCE_FILE = "source_file"
RAW = "raw"
"""The line or message as it came in. Master keeps it beside the parsed columns, so a field added to the
source later can be filled for past events (``lambda-pipeline refresh --backfill``); quarantine keeps it too."""
WINDOW_START = "window_start"
WINDOW_END = "window_end"
INGESTED_AT_MAX = "ingested_at_max"
"""Kept in speed partials so serving can tell how fresh the newest visible event is."""
RESERVED = frozenset({INGEST_TAG, INGESTED_AT, SOURCE_FILE, RAW, WINDOW_START, WINDOW_END, INGESTED_AT_MAX})

TimeFormat = Literal["iso8601", "epoch_millis", "epoch_seconds"]
TIME_FORMATS: tuple[str, ...] = ("iso8601", "epoch_millis", "epoch_seconds")
"""How the event time arrives in a line: an ISO 8601 string (UTC when it has no offset), or a JSON number of
milliseconds or seconds since the epoch. The schema declares it as a timestamp either way."""

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(name: str) -> str:
    """``name`` as a SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class EventSource:
    """The events a pipeline ingests: one JSON object per line or message.

    ``schema`` names every field ingest keeps (nested objects as ``StructType``); ``id_column`` identifies an
    event (repeats are dropped); ``time_column``, declared as a timestamp, is its event time, which arrives as
    ``time_format`` says. A line missing a ``required`` field goes to quarantine with the reason.
    """

    name: str
    schema: T.StructType
    id_column: str
    time_column: str
    required: tuple[str, ...] = ()
    time_format: TimeFormat = "iso8601"

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", tuple(self.required))
        where = f"source '{self.name}'"
        if not isinstance(self.schema, T.StructType):
            raise ViewDefinitionError(f"{where}: schema must be a pyspark StructType, got {type(self.schema).__name__}")
        names = set(self.schema.fieldNames())
        for role, column in (("id_column", self.id_column), ("time_column", self.time_column)):
            if column not in names:
                raise ViewDefinitionError(f"{where}: {role} '{column}' is not in its schema {sorted(names)}")
        if not isinstance(self.schema[self.time_column].dataType, T.TimestampType):
            found = self.schema[self.time_column].dataType.simpleString()
            raise ViewDefinitionError(
                f"{where}: time_column '{self.time_column}' must be declared as TimestampType(), not {found}; "
                "say how it arrives with time_format='iso8601' | 'epoch_millis' | 'epoch_seconds'"
            )
        if self.time_format not in TIME_FORMATS:
            raise ViewDefinitionError(
                f"{where}: time_format {self.time_format!r} is not one of {', '.join(TIME_FORMATS)}"
            )
        clash = names & RESERVED
        if clash:
            raise ViewDefinitionError(f"{where}: columns {sorted(clash)} are reserved by the pipeline; rename them")
        missing = [c for c in self.required if c not in names]
        if missing:
            raise ViewDefinitionError(f"{where}: required columns {missing} are not in its schema")

    @property
    def master_schema(self) -> T.StructType:
        """The master table: the event columns plus where and when each event came in, and its raw text."""
        return T.StructType(
            [
                *self.schema.fields,
                T.StructField(INGEST_TAG, T.LongType(), False),
                T.StructField(INGESTED_AT, T.TimestampType(), False),
                T.StructField(SOURCE_FILE, T.StringType(), True),
                T.StructField(RAW, T.StringType(), True),
            ]
        )

    def column_type(self, column: str) -> T.DataType:
        return self.schema[column].dataType
