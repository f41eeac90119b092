"""Errors a user can act on: each one names the input and what to do.

The CLI prints ``str(error)`` and exits with ``exit_code``; no stack trace.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataLossError",
    "EnvironmentProblem",
    "LambdaError",
    "ReadOnlyViolation",
    "ViewDefinitionError",
]


class LambdaError(Exception):
    """Base class of the errors the CLI reports as one clear line."""

    exit_code = 1


class ConfigError(LambdaError):
    """A config file or override is wrong: names the file, the key and the expected form."""

    exit_code = 2

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: key '{key}'" if key else source
        super().__init__(f"{where}: {message}")


class EnvironmentProblem(LambdaError):
    """The machine lacks something (Java, the Delta jars): says what and how to get it."""

    exit_code = 3


class ViewDefinitionError(LambdaError):
    """A view declaration that cannot be compiled into every layer."""

    exit_code = 2


class ReadOnlyViolation(LambdaError):
    """A query that would change data or the catalog was sent to the read-only serving API."""

    exit_code = 2


class DataLossError(LambdaError):
    """Source data the pipeline still needed is gone (e.g. aged out of Kafka): says what and how to resume."""

    exit_code = 4
