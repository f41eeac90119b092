"""Load for any declared source: seeded, schema-valid JSON lines with a realistic spread, and their bad company.

Each field of the source's schema gets values that look like its name: keys drawn from a bounded pool with a
few hot values and a long tail (Zipf-like weights), numbers in plausible ranges (``temperature_c`` around 21,
``amount`` log-normal, ``*_pct`` within 0..100), nested structs as nested objects. The id column gets unique
ids; the time column lies a few seconds before "now", a share of it minutes to an hour behind (late), written
as the source's ``time_format`` says (ISO 8601 with ``Z`` or an offset, epoch milliseconds, epoch seconds).
Exact shares of repeated lines (a copy of an earlier line, same id) and of malformed lines (not JSON, not an
object, a wrong type, a required field missing) are mixed in: exact over the generator's life, so a rate of
ten events a tick still gives 2% malformed lines.

>>> generator = SyntheticGenerator(PAYMENTS, seed=3, malformed_fraction=0.01)  # doctest: +SKIP
>>> lines, stats = generator.lines(1_000)  # doctest: +SKIP
>>> stats.events, stats.duplicates, sum(stats.malformed.values())  # doctest: +SKIP
(1000, 30, 10)
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pyspark.sql import types as T

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.views import EventSource
from lambda_pipeline.pipelines.generator import HOSTILE_KINDS, EventGenerator, GeneratedFile, check_fractions

__all__ = ["MALFORMED_REASONS", "TIME_FORMATS", "SyntheticGenerator", "encode_time", "source_time_format"]

TIME_FORMATS = ("iso8601", "epoch_millis", "epoch_seconds")
MALFORMED_REASONS = {
    "malformed_json": "malformed_json",
    "not_an_object": "malformed_json",
    "wrong_type": "wrong_type",
    "missing_field": "missing_field",
}
"""Each malformed kind and the reason ingest quarantines it with (the reason's first word)."""

Maker = Callable[[random.Random, datetime], Any]
"""Makes one field's JSON value from the generator's random state and the batch's "now"."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OFFSETS = tuple(timedelta(minutes=m) for m in (60, 120, -300, 330, -480))
_OFFSET_SHARE = 0.2
"""Share of ISO times written with an offset instead of ``Z`` (the same instant either way)."""
_LATE_SECONDS = (120.0, 3600.0)
_ON_TIME_SECONDS = (0.0, 5.0)
_WRONG_VALUE = "about a dozen"
_WRONG_TIME = "yesterday at noon"

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "country": ("US", "DE", "GB", "FR", "IN", "BR", "JP", "CA", "ES", "IT", "NL", "MX", "AU", "SE", "PL", "KR"),
    "currency": ("USD", "EUR", "GBP", "JPY", "INR", "BRL", "CAD", "AUD", "CHF", "SEK"),
    "status": ("ok", "pending", "failed", "cancelled", "refunded", "retrying"),
    "level": ("info", "warn", "error", "debug"),
    "method": ("GET", "POST", "PUT", "DELETE", "PATCH"),
    "platform": ("android", "ios", "web", "windows", "macos", "linux"),
    "os": ("android", "ios", "windows", "macos", "linux"),
    "browser": ("chrome", "safari", "firefox", "edge", "opera"),
    "channel": ("organic", "paid_search", "email", "social", "referral", "direct"),
    "lang": ("en", "de", "fr", "es", "pt", "ja", "hi", "it", "nl", "pl"),
    "locale": ("en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "pt-BR", "ja-JP", "hi-IN"),
    "city": ("London", "Berlin", "Paris", "New York", "Mumbai", "São Paulo", "Tokyo", "Toronto", "Madrid", "Lagos"),
}
_FEW = ("site", "store", "region", "team", "plant", "warehouse", "shop", "zone", "tier", "plan", "category")
_MANY: tuple[str, ...] = ("id", "key", "user", "device", "customer", "account", "session", "sku", "player", "host")
_MANY += ("sensor", "merchant", "product", "order", "item", "name", "username", "ip", "card", "game", "match")

# (name tokens it fits, how to draw it, may it go below zero): the first that fits a field's name wins.
_NUMBERS: tuple[tuple[tuple[str, ...], Callable[[random.Random], float], bool], ...] = (
    (("temp", "temperature"), lambda r: r.gauss(21.0, 4.0), True),
    (("humid", "humidity", "pct", "percent"), lambda r: min(100.0, max(0.0, r.gauss(45.0, 15.0))), False),
    (("lat", "latitude"), lambda r: r.uniform(-55.0, 70.0), True),
    (("lon", "lng", "longitude"), lambda r: r.uniform(-180.0, 180.0), True),
    (("volt", "voltage", "battery", "v"), lambda r: r.uniform(3.0, 4.2), False),
    (("rate", "ratio", "prob", "share", "fraction"), lambda r: r.random(), False),
    (("rating", "stars"), lambda r: r.uniform(1.0, 5.0), False),
    (("ms", "duration", "latency", "elapsed"), lambda r: r.lognormvariate(math.log(800.0), 1.2), False),
    (("count", "qty", "quantity", "items", "retries", "attempts"), lambda r: 1.0 + r.expovariate(0.5), False),
    (("age",), lambda r: r.uniform(18.0, 85.0), False),
    (("year",), lambda r: r.uniform(1990.0, 2027.0), False),
    (("score", "points", "level"), lambda r: r.lognormvariate(math.log(500.0), 0.8), False),
    (("bytes", "size"), lambda r: r.lognormvariate(math.log(20_000.0), 1.5), False),
    (
        ("price", "amount", "total", "cost", "revenue", "value", "balance", "fee"),
        lambda r: r.lognormvariate(3.2, 1.0),
        False,
    ),
)
_INT_RANGE: dict[type[T.DataType], tuple[int, int]] = {
    T.ByteType: (-(2**7), 2**7 - 1),
    T.ShortType: (-(2**15), 2**15 - 1),
    T.IntegerType: (-(2**31), 2**31 - 1),
    T.LongType: (-(2**63), 2**63 - 1),
}


def _default_number(rng: random.Random) -> float:
    return rng.lognormvariate(math.log(100.0), 1.0)


def source_time_format(source: EventSource) -> str:
    """How the source's time column arrives; ISO 8601 for a source declared before time formats existed."""
    return str(getattr(source, "time_format", "iso8601"))


def encode_time(moment: datetime, time_format: str, offset: timedelta | None = None) -> str | int:
    """``moment`` as a line carries it: an ISO string (``Z``, or ``offset`` when given), or epoch ms / seconds."""
    if time_format == "epoch_millis":
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    if time_format == "epoch_seconds":
        return (moment - _EPOCH) // timedelta(seconds=1)
    if time_format != "iso8601":
        raise ValueError(f"unknown time_format {time_format!r}; expected one of {list(TIME_FORMATS)}")
    if offset is None:
        return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.astimezone(timezone(offset)).isoformat(timespec="milliseconds")


def _tokens(name: str) -> list[str]:
    """``deviceId`` and ``device_id`` alike: ["device", "id"]."""
    return [t for t in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if t]


def _fits(tokens: list[str], hints: tuple[str, ...]) -> bool:
    return any(t == h or (len(h) >= 4 and t.startswith(h)) for t in tokens for h in hints)


class _Pool:
    """A bounded pool of values with Zipf-like weights: a few hot values, a long tail."""

    def __init__(self, values: list[str], rng: random.Random, exponent: float = 1.0) -> None:
        rng.shuffle(values)  # hot values anywhere in the pool, not always its first names
        self.values = values
        total, cum = 0.0, []
        for rank in range(1, len(values) + 1):
            total += 1.0 / rank**exponent
            cum.append(total)
        self.cum = cum

    def __call__(self, rng: random.Random, _now: datetime | None = None) -> str:
        return rng.choices(self.values, cum_weights=self.cum)[0]


def _string_maker(name: str, parent: str | None, rng: random.Random) -> _Pool:
    tokens = _tokens(name)
    for hint, values in _CATEGORIES.items():
        if hint in tokens:
            return _Pool(list(values), rng)
    stem = "-".join(t for t in tokens if t not in ("id", "key", "name")) or (parent or "id").lower()
    if _fits(tokens, ("email", "mail")):
        return _Pool([f"user{i:04d}@example.com" for i in range(500)], rng)
    if _fits(tokens, ("url", "page", "path", "referrer")):
        return _Pool([f"/{stem}/{i}" for i in range(60)], rng)
    if _fits(tokens, _FEW):
        return _Pool([f"{stem}-{i}" for i in range(1, 13)], rng)
    if _fits(tokens, _MANY):  # a long tail: the hottest of a thousand ids has about a tenth of the events
        return _Pool([f"{stem}-{i:04d}" for i in range(1, 1001)], rng, exponent=0.9)
    return _Pool([f"{stem}-{i:02d}" for i in range(1, 25)], rng)


def _number_maker(name: str, dtype: T.DataType) -> Maker:
    tokens = _tokens(name)
    draw, signed = next(((d, s) for hints, d, s in _NUMBERS if _fits(tokens, hints)), (_default_number, False))
    if isinstance(dtype, T.DecimalType):
        scale, bound = dtype.scale, 10.0 ** (dtype.precision - dtype.scale) - 10.0**-dtype.scale

        def decimal(rng: random.Random, _now: datetime) -> float | int:
            value = round(max(-bound, min(bound, draw(rng))), min(scale, 6))
            return int(value) if scale == 0 else value

        return decimal
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        return lambda rng, _now: round(draw(rng), 2)
    low, high = next(bounds for kind, bounds in _INT_RANGE.items() if isinstance(dtype, kind))
    low = low if signed else 0
    return lambda rng, _now: max(low, min(high, round(draw(rng))))


class SyntheticGenerator(EventGenerator):
    """Events for any :class:`EventSource`; the same seed and "now" give the same lines.

    ``duplicate_fraction`` and ``malformed_fraction`` are repeated and malformed lines per valid event,
    ``late_fraction`` the share of valid events minutes to an hour behind. ``time_format`` defaults to the
    source's own.
    """

    def __init__(
        self,
        source: EventSource,
        seed: int = 7,
        *,
        late_fraction: float = 0.05,
        duplicate_fraction: float = 0.03,
        malformed_fraction: float = 0.02,
        time_format: str | None = None,
        prefix: str | None = None,
    ) -> None:
        check_fractions(late=late_fraction, duplicate=duplicate_fraction, malformed=malformed_fraction)
        super().__init__(seed, prefix or source.name)
        self.source = source
        self.time_format = time_format or source_time_format(source)
        if self.time_format not in TIME_FORMATS:
            raise ValueError(f"unknown time_format {self.time_format!r}; expected one of {list(TIME_FORMATS)}")
        self.late, self.dup, self.bad = late_fraction, duplicate_fraction, malformed_fraction
        self._makers: dict[str, Maker] = {
            f.name: self._maker(f.name, f.dataType, None)
            for f in source.schema.fields
            if f.name not in (source.id_column, source.time_column)
        }
        self._id_base = self._id_scheme(source.schema[source.id_column].dataType)
        # Top-level fields a string value spoils: numbers, booleans, dates and times (the time column at least).
        spoilable: tuple[type[T.DataType], ...] = (*_INT_RANGE, T.FloatType, T.DoubleType, T.DecimalType)
        spoilable += (T.BooleanType, T.DateType, T.TimestampType, T.TimestampNTZType)
        self._typed_fields = [f.name for f in source.schema.fields if isinstance(f.dataType, spoilable)]
        self.malformed_kinds = tuple(k for k in MALFORMED_REASONS if k != "missing_field" or source.required)
        self.hostile_kinds = tuple(
            k for k in sorted(HOSTILE_KINDS) if k not in ("missing_field", "null_field") or source.required
        )
        self._recent: deque[str] = deque(maxlen=200)
        self._counter = 0
        self._asked = 0
        self._made: Counter[str] = Counter()

    def _maker(self, path: str, dtype: T.DataType, parent: str | None) -> Maker:
        """How one field's values are drawn; refuses a type that JSON lines cannot carry."""
        name = path.rsplit(".", 1)[-1]
        if isinstance(dtype, (T.StringType, T.CharType, T.VarcharType)):
            return _string_maker(name, parent, self.rng)
        if isinstance(dtype, (*_INT_RANGE, T.FloatType, T.DoubleType, T.DecimalType)):
            return _number_maker(name, dtype)
        if isinstance(dtype, T.BooleanType):
            return lambda rng, _now: rng.random() < 0.3
        if isinstance(dtype, T.DateType):
            return lambda rng, now: (now - timedelta(days=int(rng.expovariate(1 / 30)))).date().isoformat()
        if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
            iso = "T%H:%M:%S" if isinstance(dtype, T.TimestampNTZType) else "T%H:%M:%SZ"
            return lambda rng, now: (now - timedelta(seconds=rng.expovariate(1 / 86_400))).strftime("%Y-%m-%d" + iso)
        if isinstance(dtype, T.BinaryType):
            return lambda rng, _now: base64.b64encode(rng.randbytes(8)).decode()
        if isinstance(dtype, T.StructType):
            children = {f.name: self._maker(f"{path}.{f.name}", f.dataType, name) for f in dtype.fields}
            return lambda rng, now: {child: make(rng, now) for child, make in children.items()}
        if isinstance(dtype, T.ArrayType):
            element = self._maker(path, dtype.elementType, parent)
            return lambda rng, now: [element(rng, now) for _ in range(rng.randrange(4))]
        if isinstance(dtype, T.MapType) and isinstance(dtype.keyType, T.StringType):
            key, value = _string_maker(f"{name}_key", name, self.rng), self._maker(path, dtype.valueType, parent)
            return lambda rng, now: {key(rng): value(rng, now) for _ in range(rng.randrange(4))}
        raise LambdaError(
            f"source '{self.source.name}': the synthetic generator cannot make values for field '{path}' of type "
            f"{dtype.simpleString()}; generate this source's events with your own producer"
        )

    def _id_scheme(self, dtype: T.DataType) -> int | None:
        """None for string ids (``<source>-<seed>-<n>``), else the base a numeric id counts up from."""
        if isinstance(dtype, T.StringType):
            return None
        if isinstance(dtype, T.LongType):
            return (self.seed % 10**8) * 10**10
        if isinstance(dtype, T.IntegerType):
            return (self.seed % 200) * 10**7
        raise LambdaError(
            f"source '{self.source.name}': the synthetic generator makes string, int or bigint ids; "
            f"id_column '{self.source.id_column}' is {dtype.simpleString()}"
        )

    def _next_id(self) -> str | int:
        self._counter += 1
        if self._id_base is None:
            return f"{self.source.name}-{self.seed:x}-{self._counter:08d}"
        return self._id_base + self._counter

    def _event_time(self, now: datetime) -> tuple[str | int, bool]:
        late = self.rng.random() < self.late
        low, high = _LATE_SECONDS if late else _ON_TIME_SECONDS
        moment = now - timedelta(seconds=self.rng.uniform(low, high))
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        offset = None
        if self.time_format == "iso8601" and self.rng.random() < _OFFSET_SHARE:
            offset = self.rng.choice(_OFFSETS)
        return encode_time(moment, self.time_format, offset), late

    def _record(self, now: datetime) -> tuple[str, dict[str, Any], bool]:
        """One valid event: its id (as text), its JSON object, and whether it is late."""
        event_id = self._next_id()
        event_time, late = self._event_time(now)
        values = {self.source.id_column: event_id, self.source.time_column: event_time}
        record = {
            f.name: values[f.name] if f.name in values else self._makers[f.name](self.rng, now)
            for f in self.source.schema.fields
        }
        return str(event_id), record, late

    def _spoil(self, kind: str, record: dict[str, Any]) -> str:
        """A valid record made malformed in the way ``kind`` names (see MALFORMED_REASONS)."""
        if kind == "malformed_json":
            line = _dumps(record)
            return line[: len(line) // 2]
        if kind == "not_an_object":
            return json.dumps([record[self.source.id_column], record[self.source.time_column]])
        if kind == "wrong_type":
            name = self.rng.choice(self._typed_fields)
            dtype = self.source.schema[name].dataType
            record[name] = _WRONG_TIME if isinstance(dtype, (T.DateType, T.TimestampType)) else _WRONG_VALUE
        elif kind == "missing_field":
            del record[self.rng.choice(self.source.required)]
        else:
            raise ValueError(f"unknown malformed kind {kind!r}; expected one of {list(MALFORMED_REASONS)}")
        return _dumps(record)

    def _due(self, events: int) -> tuple[int, int]:
        """Repeated and malformed lines owed after ``events`` more events: exact over the generator's life."""
        self._asked += events
        owed = []
        for kind, fraction in (("duplicates", self.dup), ("malformed", self.bad)):
            n = min(events, int(self._asked * fraction + 0.5) - self._made[kind])
            self._made[kind] += n
            owed.append(n)
        return owed[0], owed[1]

    def lines(self, events: int, now: datetime | None = None) -> tuple[list[str], GeneratedFile]:
        """``events`` distinct valid events, plus repeated and malformed lines mixed in at random places."""
        now = now or datetime.now(timezone.utc)
        duplicates, malformed = self._due(events)
        following: list[list[bool]] = [[] for _ in range(events)]  # after each event: True a repeat, False a bad line
        for repeat in [True] * duplicates + [False] * malformed:
            following[self.rng.randrange(events)].append(repeat)
        out: list[str] = []
        stats = GeneratedFile(Path())
        for extras in following:
            event_id, record, late = self._record(now)
            line = _dumps(record)
            out.append(line)
            self._recent.append(line)
            stats.events += 1
            stats.late += late
            stats.event_ids.append(event_id)
            for repeat in extras:
                if repeat:
                    out.append(self.rng.choice(self._recent))
                    stats.duplicates += 1
                else:
                    kind = self.rng.choice(self.malformed_kinds)
                    out.append(self._spoil(kind, self._record(now)[1]))
                    stats.malformed[kind] += 1
        stats.lines = len(out)
        return out, stats

    def hostile_message(
        self, kind: str, now: datetime, oversize_bytes: int = 200_000
    ) -> tuple[bytes | None, str | None]:
        """One message of a hostile ``kind`` (see HOSTILE_KINDS) and, when it is a valid event, its id."""
        if kind not in self.hostile_kinds:
            raise ValueError(f"unknown hostile kind {kind!r} for source '{self.source.name}': {self.hostile_kinds}")
        event_id, record, _ = self._record(now)
        names = set(self.source.schema.fieldNames())
        if kind == "null_value":
            return None, None
        if kind == "empty_value":
            return b"", None
        if kind == "duplicate_id":
            if not self._recent:  # nothing to repeat yet: this event is new, and counted as one
                self._recent.append(_dumps(record))
                return self._recent[-1].encode(), event_id
            return self.rng.choice(self._recent).encode(), None
        if kind == "non_utf8":
            line = _dumps(record).encode()
            return line[:20] + b"\xff\xfe\xc3(" + line[20:], None
        if kind in ("wrong_type", "malformed_json", "missing_field"):
            return self._spoil(kind, record).encode(), None
        if kind == "null_field":
            record[self.rng.choice(self.source.required)] = None
        elif kind == "oversize":
            record[_spare("padding", names)] = "x" * oversize_bytes
        elif kind == "future_time":
            record[self.source.time_column] = encode_time(now + timedelta(days=400), self.time_format)
        elif kind == "ancient_time":
            moment = datetime(1969, 7, 20, 20, 17, 40, tzinfo=timezone.utc)
            record[self.source.time_column] = encode_time(moment, self.time_format)
        elif kind == "schema_drift":  # an additive field the schema does not know: accepted
            record[_spare("referrer", names)] = "https://example.com/"
            return _dumps(record).encode(), event_id
        return _dumps(record).encode(), None


def _spare(name: str, taken: set[str]) -> str:
    """A field name the schema does not declare."""
    while name in taken:
        name = f"_{name}"
    return name


def _dumps(record: object) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
