"""Loading the settings: the config file, the environment's overrides, ``--set``, and errors that say where.

Every job loads its settings here, so a typo stops all of them the same way: unknown keys and bad values
fail with the input that holds them (the file, an environment variable or ``--set``), the dotted key and
the form that was expected. Overrides apply before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.secrets import may_hold_credential

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["CONFIG_PACKAGE", "DEFAULT_CONFIG", "ENVIRONMENT_VARIABLES", "load_settings", "shipped_configs"]

# The configs ship inside the package (the repository's conf/ folder, installed as lambda_pipeline.conf),
# so the default works from a checkout, an installed wheel and spark-submit's zip alike.
CONFIG_PACKAGE = "lambda_pipeline.conf"


def shipped_configs() -> Traversable:
    """The folder of the shipped ``*.yaml`` configs: a real folder, or a folder inside a zip."""
    try:
        return files(CONFIG_PACKAGE)
    except ModuleNotFoundError:  # the core alone from a source tree (the image's jar prefetch step)
        return Path(__file__).resolve().parents[2] / "conf"


DEFAULT_CONFIG = Path(str(shipped_configs().joinpath("local.yaml")))

# Every environment variable of the project's own that the code reads, and what it means. Containers and
# schedulers configure the jobs through the first three (load_settings); the command line still wins.
ENVIRONMENT_VARIABLES: dict[str, str] = {
    "LAMBDA_PIPELINE_CONFIG": "config file used when --config is not given",
    "LAMBDA_PIPELINE_WORKDIR": "work directory used when --workdir is not given (replaces the config's 'workdir')",
    "LAMBDA_PIPELINE_PIPELINE": "pipeline used when --pipeline is not given: a shipped name, 'package.module:ATTR' "
    "or 'path/to/file.py:ATTR' (replaces the config's 'pipeline'; --set pipeline= wins over it)",
    "LAMBDA_PIPELINE_SET": "KEY=VALUE overrides separated by spaces (shell quoting), validated like --set, "
    "applied before the --set options",
    "LAMBDA_PIPELINE_CACHE": "cache of resolved jar paths and fetched jars (default ~/.cache/lambda-pipeline)",
    "LAMBDA_PIPELINE_VERBOSE": "1 shows everything: Ivy's resolution report, Spark's start-up log lines and "
    "PySpark's error logs (like --verbose)",
    "LAMBDA_PIPELINE_MAVEN_REPO": "Maven repository of the jars fetched directly (default Maven Central)",
    "LAMBDA_PIPELINE_SERVE_TOKEN": "token of the query server (serve.token_env's default name): required beyond "
    "loopback, sent by the client and by 'query' through a running server",
}


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
        raise ConfigError("--set", text, "expected KEY=VALUE, for example --set ingest.trigger='2 seconds'")
    # spark.conf keys contain dots themselves: everything after 'spark.conf.' is one key.
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _config_text(file: Path) -> str | None:
    """The text of a config file, or None. The embedded default is read as a resource when the code runs
    from a zip (spark-submit --py-files), where it has no real path on disk."""
    if file.is_file():
        return file.read_text(encoding="utf-8")
    if file == DEFAULT_CONFIG:
        resource = shipped_configs().joinpath(DEFAULT_CONFIG.name)
        if resource.is_file():
            return resource.read_text(encoding="utf-8")
    return None


def _env_source(variable: str) -> str:
    return f"environment variable {variable}"


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    """``(variable, dotted key, value)`` from LAMBDA_PIPELINE_WORKDIR and _PIPELINE, then LAMBDA_PIPELINE_SET.

    One variable holds all the overrides, shell-quoted like a command line, so a compose file or a scheduler
    sets any key without the project having to name a variable per key.
    """
    out: list[tuple[str, str, Any]] = []
    workdir = environ.get("LAMBDA_PIPELINE_WORKDIR", "").strip()
    if workdir:
        out.append(("LAMBDA_PIPELINE_WORKDIR", "workdir", workdir))  # a path, never YAML-typed
    pipeline = environ.get("LAMBDA_PIPELINE_PIPELINE", "").strip()
    if pipeline:
        out.append(("LAMBDA_PIPELINE_PIPELINE", "pipeline", pipeline))
    variable = "LAMBDA_PIPELINE_SET"
    try:
        words = shlex.split(environ.get("LAMBDA_PIPELINE_SET", ""))
    except ValueError as exc:
        raise ConfigError(
            _env_source(variable), None, f"not valid shell-style words ({exc}); quote values that hold spaces"
        ) from None
    for word in words:
        try:
            key, value = _parse_override(word)
        except ConfigError:
            raise ConfigError(
                _env_source(variable),
                word,
                "expected KEY=VALUE pairs separated by spaces, e.g. "
                "\"spark.master=spark://spark-master:7077 ingest.trigger='2 seconds'\"",
            ) from None
        out.append((variable, key, value))
    return out


def _apply_override(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    if key.startswith("spark.conf."):
        tree.setdefault("spark", {}).setdefault("conf", {})[key[len("spark.conf.") :]] = value
    else:
        _set_dotted(tree, key, value, source)


def _blame(source: str, key: str | None, origins: Mapping[str, str]) -> str:
    """Who set a failing key: the override that set it (the newest first), else the file.

    ``origins`` maps each overridden dotted key to its override, in the order they applied. An override
    of a section's key is blamed for an error of the section (``ingest.kafka.topic`` for ``ingest.kafka``),
    and an override of a whole section for an error inside it.
    """
    if key is None:
        return source
    if key in origins:
        return origins[key]
    for set_key, origin in reversed(list(origins.items())):
        if set_key.startswith(f"{key}.") or key.startswith(f"{set_key}."):
            return origin
    return source


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """Why a key is refused: the closest valid key at its level, if one is close, and the valid keys there."""
    *parents, name = (str(part) for part in loc)
    model: type[BaseModel] = Settings
    for part in parents:
        field = model.model_fields.get(part)
        section = field.annotation if field is not None else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return "unknown key"
        model = section
    valid = list(model.model_fields)
    close = difflib.get_close_matches(name, valid, n=1)
    guess = f" (did you mean '{close[0]}'?)" if close else ""
    where = f"in '{'.'.join(parents)}'" if parents else "at the top level"
    return f"unknown key{guess}; the valid keys {where} are: {', '.join(valid)}"


def _message(error: ErrorDetails, loc: str | None) -> str:
    """What is wrong with the value at ``loc``, and what was given unless it may be a credential."""
    if error["type"] == "extra_forbidden":
        return _unknown_key(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    # Never echo what was given for Kafka options, S3 or Spark settings: it may be a credential.
    # A check across keys (loc empty) names its keys in its message: its input is the whole config.
    if not loc or "input" not in error or error["type"] == "missing" or "got " in message:
        return message
    return message if may_hold_credential(loc) else f"{message} (got {error['input']!r})"


OVERRIDE_HELP = "override a config value, e.g. --set ingest.trigger='2 seconds' (repeatable)"


def add_override_option(parser: argparse.ArgumentParser, help: str = OVERRIDE_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable) on a verb's parser: the overrides :func:`load_settings` applies last."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def config_file(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file a verb reads: ``path``, else $LAMBDA_PIPELINE_CONFIG, else the shipped local.yaml."""
    environ = os.environ if environ is None else environ
    configured = environ.get("LAMBDA_PIPELINE_CONFIG", "").strip() if path is None else ""
    return Path(path) if path is not None else Path(configured) if configured else DEFAULT_CONFIG


def load_settings(
    path: str | Path | None = None, overrides: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> Settings:
    """Load and validate a config file, then apply the environment's overrides and ``KEY=VALUE`` overrides.

    ``environ`` (default: this process's environment) supplies the variables of ENVIRONMENT_VARIABLES: the
    config file when ``path`` is None, the work directory and overrides. ``overrides`` (--set) apply last.
    An error names the input that set the failing key: the file, the environment variable or ``--set``.
    """
    environ = os.environ if environ is None else environ
    configured = environ.get("LAMBDA_PIPELINE_CONFIG", "").strip() if path is None else ""
    file = config_file(path, environ)
    source = str(file)
    text = _config_text(file)
    if text is None:
        if configured:
            raise ConfigError(
                f"{source} (from {_env_source('LAMBDA_PIPELINE_CONFIG')})",
                None,
                "file not found; set LAMBDA_PIPELINE_CONFIG to the path of a YAML config file, or pass --config",
            )
        raise ConfigError(source, None, "file not found; pass --config with the path of a YAML config file")
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(source, None, "expected a mapping of sections at the top level")
    origins: dict[str, str] = {}  # dotted key -> the override that set it last, in the order applied
    for variable, key, value in _environment_overrides(environ):
        _apply_override(tree, key, value, _env_source(variable))
        origins.pop(key, None)
        origins[key] = f"{_env_source(variable)} (over {source})"
    for text in overrides:
        key, value = _parse_override(text)
        _apply_override(tree, key, value, "--set")
        origins.pop(key, None)
        origins[key] = "--set"
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or None
        raise ConfigError(_blame(source, loc, origins), loc, _message(first, loc)) from None
