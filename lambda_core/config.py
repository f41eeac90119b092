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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lambda_core.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "BatchSettings",
    "IngestSettings",
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


class IngestSettings(_Strict):
    source: Literal["files"] = "files"
    landing_dir: str = "landing"
    trigger: str = "1 second"
    max_files_per_trigger: int = Field(default=100, gt=0)
    dedup_horizon: str = "15 minutes"
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
            if "input" in first and first["type"] != "missing" and "got " not in message:
                message += f" (got {first['input']!r})"
        raise ConfigError(source, key, message) from None
