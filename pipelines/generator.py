"""Seeded event generators: JSON-lines files (or Kafka messages) with late, duplicated and malformed events.

:class:`EventGenerator` is what every generator offers the ``generate`` and ``demo`` verbs: lines for a count of
events, whole files into the landing folder, and Kafka message values with the hostile kinds only a broker carries.
A generator only says how one batch of lines and one hostile message look; writing is shared. Here is the
clickstream demo's generator, whose returned stats are the ground truth the tests and the demo reconcile against;
:mod:`.synthetic` generates for any declared source, :mod:`.iot_generator` for the shipped IoT readings.

Files are written under a hidden name and renamed into the landing folder (on S3,
uploaded whole under their final name), so the ingest stream never reads half a file, on any file system.
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import HadoopPath

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "HOSTILE_KINDS",
    "MALFORMED_KINDS",
    "ClickstreamGenerator",
    "EventGenerator",
    "GeneratedFile",
    "GeneratedMessages",
    "check_fractions",
]

PAGES = tuple(
    f"/{p}"
    for p in (
        "home",
        "search",
        "cart",
        "checkout",
        "product/1",
        "product/2",
        "product/3",
        "product/4",
        "blog",
        "about",
        "help",
        "login",
        "signup",
        "account",
        "orders",
        "deals",
        "news",
        "careers",
        "contact",
        "terms",
    )
)
MALFORMED_KINDS = ("truncated_json", "wrong_type", "missing_field", "bad_time", "not_an_object", "empty_line")
# What only a message broker can carry, plus policy cases; each kind maps to the reason ingest gives it
# (None: accepted by policy; an additive new field is ignored, the event goes to master).
HOSTILE_KINDS: dict[str, str | None] = {
    "null_value": "empty_message",
    "empty_value": "empty_line",
    "null_field": "missing_field",
    "non_utf8": "invalid_utf8",
    "oversize": "oversize",
    "future_time": "event_time_out_of_range",
    "ancient_time": "event_time_out_of_range",
    "duplicate_id": "duplicate",
    "wrong_type": "wrong_type",
    "malformed_json": "malformed_json",
    "missing_field": "missing_field",
    "schema_drift": None,
}


@dataclass
class GeneratedFile:
    path: PurePath
    """The file; on an object store (``s3a://``) the key's path within its bucket."""
    lines: int = 0
    events: int = 0
    duplicates: int = 0
    late: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    event_ids: list[str] = field(default_factory=list)
    written_at: float = 0.0


@dataclass
class GeneratedMessages:
    """Ground truth for messages sent to Kafka: counts by kind, and the ids that must reach master."""

    messages: int = 0
    events: int = 0
    duplicates: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    hostile: Counter[str] = field(default_factory=Counter)
    event_ids: list[str] = field(default_factory=list)


def check_fractions(**fractions: float) -> None:
    """Refuse a share outside [0, 1): ``check_fractions(late=0.05, duplicate=0.03)``."""
    for name, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}_fraction must be within [0, 1), got {value}")


class EventGenerator(ABC):
    """What the ``generate`` and ``demo`` verbs need of a generator; deterministic for a given seed (times aside).

    A subclass says how :meth:`lines` and :meth:`hostile_message` look; files and Kafka messages follow from them.
    """

    hostile_kinds: tuple[str, ...] = tuple(sorted(HOSTILE_KINDS))
    """The hostile kinds this generator can make, in the order :meth:`messages` cycles through them."""

    def __init__(self, seed: int, prefix: str) -> None:
        self.rng = random.Random(seed)
        self.seed, self.prefix = seed, prefix
        self._files = 0

    @abstractmethod
    def lines(self, events: int, now: datetime | None = None) -> tuple[list[str], GeneratedFile]:
        """``events`` distinct valid events, plus duplicates and malformed lines mixed in."""

    @abstractmethod
    def hostile_message(
        self, kind: str, now: datetime, oversize_bytes: int = 200_000
    ) -> tuple[bytes | None, str | None]:
        """One message of a hostile ``kind`` (see HOSTILE_KINDS) and, when it is a valid event, its id."""

    def messages(
        self, events: int, hostile_fraction: float = 0.0, now: datetime | None = None
    ) -> tuple[list[bytes | None], GeneratedMessages]:
        """Kafka message values: the lines of :meth:`lines` plus, if asked, every hostile kind in turn."""
        now = now or datetime.now(timezone.utc)
        lines, file_stats = self.lines(events, now)
        stats = GeneratedMessages(
            events=file_stats.events,
            duplicates=file_stats.duplicates,
            malformed=file_stats.malformed,
            event_ids=file_stats.event_ids,
        )
        out: list[bytes | None] = [line.encode() for line in lines]
        kinds = self.hostile_kinds
        for i in range(round(events * hostile_fraction)):
            kind = kinds[i % len(kinds)]
            value, event_id = self.hostile_message(kind, now)
            out.insert(self.rng.randrange(len(out) + 1), value)
            stats.hostile[kind] += 1
            if event_id is not None:
                stats.events += 1
                stats.event_ids.append(event_id)
        stats.messages = len(out)
        return out, stats

    def write_file(self, landing: str | Path, events: int, *, spark: SparkSession | None = None) -> GeneratedFile:
        """Write one file atomically into ``landing``: the ingest stream must never see half of it.

        A local folder (or ``file:`` URI) gets a hidden name first, then a rename. Any other URI is written
        through Spark's Hadoop file system (``spark``, else the active session): on an object store (``s3a://``)
        straight under its final name, since an object becomes visible only once its upload completed; on
        HDFS and any other file system under a hidden name in the same folder (Spark's file source skips names
        that start with ``.``), then renamed, which HDFS does atomically.
        """
        lines, stats = self.lines(events)
        self._files += 1
        name = f"{self.prefix}-{self.seed:x}-{self._files:06d}-{time.time_ns()}.jsonl"
        data = ("\n".join(lines) + "\n").encode("utf-8")
        target = str(landing)
        if "://" in target and not target.startswith("file:"):
            uri = posixpath.join(target, name)
            _write_through_hadoop(spark, target, name, data)
            stats.path, stats.written_at = PurePosixPath(urlsplit(uri).path), time.time()
            return stats
        folder = Path(urlsplit(target).path if target.startswith("file:") else target)
        folder.mkdir(parents=True, exist_ok=True)
        hidden = folder / f".{name}.tmp"
        hidden.write_bytes(data)
        final = folder / name
        os.replace(hidden, final)
        stats.path, stats.written_at = final, time.time()
        return stats

    def write(
        self, landing: str | Path, events: int, files: int = 1, *, spark: SparkSession | None = None
    ) -> list[GeneratedFile]:
        """``events`` valid events spread over ``files`` files."""
        per_file = [events // files + (1 if i < events % files else 0) for i in range(files)]
        return [self.write_file(landing, n, spark=spark) for n in per_file if n > 0]

    def run_at_rate(
        self, landing: str | Path, rate: float, seconds: float, files_per_second: float = 2.0
    ) -> list[GeneratedFile]:
        """Write at ``rate`` valid events per second for ``seconds`` (bounded in time and count)."""
        interval = 1.0 / files_per_second
        per_file = max(1, round(rate * interval))
        written: list[GeneratedFile] = []
        start = time.monotonic()
        ticks = max(1, int(seconds * files_per_second))
        for tick in range(ticks):
            written.append(self.write_file(landing, per_file))
            delay = start + (tick + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the producer, not synchronising with Spark
        return written


class ClickstreamGenerator(EventGenerator):
    """Deterministic for a given seed: the same seed writes the same lines (times aside)."""

    def __init__(
        self,
        seed: int = 7,
        *,
        late_fraction: float = 0.05,
        duplicate_fraction: float = 0.03,
        malformed_fraction: float = 0.02,
        users: int = 2_000,
        pages: tuple[str, ...] = PAGES,
        prefix: str = "clicks",
    ) -> None:
        check_fractions(late=late_fraction, duplicate=duplicate_fraction, malformed=malformed_fraction)
        super().__init__(seed, prefix)
        self.late, self.dup, self.bad = late_fraction, duplicate_fraction, malformed_fraction
        self.users, self.pages = users, pages
        self._recent: deque[str] = deque(maxlen=200)
        self._counter = 0

    def _event(self, now: datetime) -> tuple[str, str, bool]:
        self._counter += 1
        event_id = f"{self.seed:x}-{self.rng.getrandbits(48):012x}-{self._counter:08d}"
        late = self.rng.random() < self.late
        offset = self.rng.uniform(120, 1800) if late else self.rng.uniform(0, 5)
        event_time = (now - timedelta(seconds=offset)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = {
            "event_id": event_id,
            "user_id": f"u{self.rng.randrange(self.users):05d}",
            "page": self.rng.choice(self.pages),
            "event_time": event_time,
            "duration_ms": self.rng.randrange(50, 120_000),
        }
        return event_id, json.dumps(record, separators=(",", ":")), late

    def _malformed(self, kind: str, now: datetime) -> str:
        _, line, _ = self._event(now)
        record = json.loads(line)
        if kind == "truncated_json":
            return line[: len(line) // 2]
        if kind == "wrong_type":
            record["duration_ms"] = "about a minute"
        elif kind == "missing_field":
            del record["user_id"]
        elif kind == "bad_time":
            record["event_time"] = "yesterday at noon"
        elif kind == "not_an_object":
            return json.dumps([record["event_id"], record["page"]])
        elif kind == "empty_line":
            return ""
        return json.dumps(record, separators=(",", ":"))

    def lines(self, events: int, now: datetime | None = None) -> tuple[list[str], GeneratedFile]:
        """``events`` distinct valid events, plus duplicates and malformed lines mixed in."""
        now = now or datetime.now(timezone.utc)
        out: list[str] = []
        stats = GeneratedFile(Path())
        for _ in range(events):
            event_id, line, late = self._event(now)
            out.append(line)
            stats.events += 1
            stats.late += late
            stats.event_ids.append(event_id)
            self._recent.append(line)
            if self.rng.random() < self.dup:
                out.append(self.rng.choice(self._recent))
                stats.duplicates += 1
            if self.rng.random() < self.bad:
                kind = self.rng.choice(MALFORMED_KINDS)
                out.append(self._malformed(kind, now))
                stats.malformed[kind] += 1
        if out and out[-1] == "":  # a trailing empty line is not a line to a reader
            out.append(self._event(now)[1])
            stats.events += 1
            stats.event_ids.append(json.loads(out[-1])["event_id"])
        stats.lines = len(out)
        return out, stats

    def hostile_message(
        self, kind: str, now: datetime, oversize_bytes: int = 200_000
    ) -> tuple[bytes | None, str | None]:
        """One message of a hostile ``kind`` (see HOSTILE_KINDS) and, when it is a valid event, its id."""
        event_id, line, _ = self._event(now)
        record = json.loads(line)
        if kind == "null_value":
            return None, None
        if kind == "empty_value":
            return b"", None
        if kind == "null_field":
            record["page"] = None
        elif kind == "non_utf8":
            return line.encode()[:20] + b"\xff\xfe\xc3(" + line.encode()[20:], None
        elif kind == "oversize":
            record["padding"] = "x" * oversize_bytes
        elif kind == "future_time":
            record["event_time"] = (now + timedelta(days=400)).isoformat().replace("+00:00", "Z")
        elif kind == "ancient_time":
            record["event_time"] = "1969-07-20T20:17:40Z"
        elif kind == "duplicate_id":
            return (self.rng.choice(self._recent) if self._recent else line).encode(), None
        elif kind == "wrong_type":
            record["duration_ms"] = {"value": 12}
        elif kind == "malformed_json":
            return line[: len(line) // 3].encode(), None
        elif kind == "missing_field":
            del record["event_id"]
        elif kind == "schema_drift":
            record["referrer"] = "https://example.com/"
            return json.dumps(record, separators=(",", ":")).encode(), event_id
        else:
            raise ValueError(f"unknown hostile kind {kind!r}; expected one of {sorted(HOSTILE_KINDS)}")
        return json.dumps(record, separators=(",", ":")).encode(), None


OBJECT_STORE_SCHEMES = ("s3a", "s3", "s3n", "gs")
"""Where a file is an object, visible only once its upload completed, and a rename is a copy."""


def _write_through_hadoop(spark: SparkSession | None, folder: str, name: str, data: bytes) -> None:
    """One file written whole into ``folder`` through Hadoop's file system, never visible half-written."""
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    if spark is None:
        raise LambdaError(
            f"writing into {folder} needs Spark's Hadoop file system (hadoop-aws for s3a://); start a Spark session "
            "first (lambda_pipeline.core.session.get_spark) or pass it as spark="
        )
    landing = HadoopPath(spark, folder)
    final = landing.child(name)
    # Never overwrite: names are unique, so a clash is a bug.
    if urlsplit(folder).scheme.lower() in OBJECT_STORE_SCHEMES:
        final.write_new(data)  # S3A uploads when the stream closes, in one request
        return
    hidden = landing.child(f".{name}.tmp")
    hidden.write_new(data)
    hidden.rename(final)
