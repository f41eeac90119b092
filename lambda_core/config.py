"""Typed, strict configuration loaded from ``conf/*.yaml``.

Every job reads the same file, so a typo must stop all of them the same way:
unknown keys and bad values fail with the file, the dotted key and the form
that was expected. ``--set key=value`` overrides apply before validation, so
they are checked exactly like the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lambda_core.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "BatchSettings",
    "EventTimePolicy",
    "IngestSettings",
    "KafkaSettings",
    "Settings",
    "SparkSettings",
    "SpeedSettings",
    "TableNames",
    "duration_seconds",
    "load_settings",
]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "local.yaml"

_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"ms": 0.001, "mi": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as ``"500 ms"``, ``"1 second"`` or ``"5 minutes"``."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration like '1 second', '500 ms' or '5 minutes', got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    key = "mi" if unit.startswith("milli") else ("ms" if unit == "ms" else unit[0])
    return number * _UNIT_SECONDS[key]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_duration(value: str) -> str:
    if duration_seconds(value) <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return value


class TableNames(_Strict):
    """Names of the tables; each one is also its folder under the warehouse."""

    master: str = "master_events"
    quarantine: str = "quarantine"
    coverage: str = "coverage"

    @field_validator("master", "quarantine", "coverage")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"expected an identifier of letters, digits and '_', got {value!r}")
        return value


_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
# Kafka options that carry credentials: their value must come from the environment, never from a file.
_SECRET_OPTIONS = ("password", "secret", "jaas.config", "key.password", "keystore", "truststore.password")


class KafkaSettings(_Strict):
    """The Kafka source of the ingest job (Spark's ``kafka`` connector) and its producers.

    ``options`` are passed through to the connector as ``kafka.<name>`` (SASL/SSL, MSK IAM, timeouts).
    A value may be ``${env:NAME}``, read from the environment when the job starts; credentials
    must be given that way, so that no secret is ever written in a config file.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str | None = "clickstream"
    subscribe_pattern: str | None = None
    partitions: int = Field(default=2, gt=0, description="partitions of the topic when the project creates it")
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    max_offsets_per_trigger: int | None = Field(default=200_000, gt=0)
    min_partitions: int | None = Field(default=None, gt=0)
    max_message_bytes: int = Field(default=65_536, gt=0, description="larger messages are quarantined whole")
    fail_on_data_loss: bool = True
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _option_values(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out = {}
        for key, raw in value.items():
            key, text = str(key).removeprefix("kafka."), str(raw).lower() if isinstance(raw, bool) else str(raw)
            secret = any(marker in key for marker in _SECRET_OPTIONS)
            # MSK IAM's JAAS line holds no secret: the instance role authenticates.
            if secret and not _ENV_REF.search(text) and "IAMLoginModule" not in text:
                raise ValueError(
                    f"option {key!r} holds a credential: write it as '${{env:NAME}}' and export NAME "
                    "in the job's environment (or use an instance role with MSK IAM)"
                )
            out[key] = text
        return out

    @model_validator(mode="after")
    def _one_subscription(self) -> KafkaSettings:
        if (self.topic is None) == (self.subscribe_pattern is None):
            raise ValueError("set exactly one of ingest.kafka.topic and ingest.kafka.subscribe_pattern")
        return self

    def resolved_options(self) -> dict[str, str]:
        """``options`` with every ``${env:NAME}`` replaced; a missing variable is a configuration error."""
        import os

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError("environment", name, "is referenced by ingest.kafka.options but not set")
            return os.environ[name]

        return {key: _ENV_REF.sub(value, text) for key, text in self.options.items()}


class EventTimePolicy(_Strict):
    """Which event times are plausible. Late events inside the bounds are accepted: the batch layer
    recomputes them exactly. Outside, the event is quarantined with the reason ``event_time_out_of_range``."""

    max_future: str = "1 hour"
    earliest: str = "2000-01-01T00:00:00Z"
    _durations = field_validator("max_future")(_check_duration)


class IngestSettings(_Strict):
    source: Literal["files", "kafka"] = "files"
    landing_dir: str = "landing"
    trigger: str = "1 second"
    max_files_per_trigger: int = Field(default=100, gt=0)
    dedup_horizon: str = "15 minutes"
    event_time: EventTimePolicy = Field(default_factory=EventTimePolicy)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    _durations = field_validator("trigger", "dedup_horizon")(_check_duration)


class SpeedSettings(_Strict):
    trigger: str = "1 second"
    max_files_per_trigger: int = Field(default=1000, gt=0)
    compact_every: int = Field(default=50, ge=0, description="OPTIMIZE the partials every N micro-batches; 0 = never")
    _durations = field_validator("trigger")(_check_duration)


class BatchSettings(_Strict):
    interval: str = "5 minutes"
    _durations = field_validator("interval")(_check_duration)


class SparkSettings(_Strict):
    master: str = "local[2]"
    app_name: str = "lambda-pipeline"
    shuffle_partitions: int = Field(default=2, gt=0)
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value


class Settings(_Strict):
    """The whole configuration of a deployment."""

    pipeline: str = "clickstream"
    workdir: str = "lambda-work"
    warehouse: str = "warehouse"
    checkpoints: str = "checkpoints"
    # Delta txnAppId/txnVersion on every streaming commit. Switch off only for the crash tests' control
    # run, which must show that without them a replayed micro-batch is written twice.
    idempotent_writes: bool = True
    tables: TableNames = Field(default_factory=TableNames)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(source, dotted, f"'{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected KEY=VALUE, for example --set speed.trigger='2 seconds'")
    # spark.conf keys contain dots themselves: everything after 'spark.conf.' is one key.
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_settings(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Settings:
    """Load and validate a config file, then apply ``KEY=VALUE`` overrides."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    source = str(file)
    if not file.is_file():
        raise ConfigError(source, None, "file not found; pass --config with the path of a YAML config file")
    try:
        tree = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(source, None, "expected a mapping of sections at the top level")
    for text in overrides:
        key, value = _parse_override(text)
        if key.startswith("spark.conf."):
            tree.setdefault("spark", {}).setdefault("conf", {})[key[len("spark.conf.") :]] = value
        else:
            _set_dotted(tree, key, value, "--set")
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against conf/local.yaml"
        else:
            message = first["msg"].removeprefix("Value error, ")
            # Never echo what was given for Kafka options: it may be a credential.
            secret = key is not None and ".options" in key
            if "input" in first and first["type"] != "missing" and "got " not in message and not secret:
                message += f" (got {first['input']!r})"
        raise ConfigError(source, key, message) from None
