"""Pipelines by the name the config's ``pipeline`` key uses."""

from __future__ import annotations

from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM

__all__ = ["PIPELINES", "get_pipeline"]

PIPELINES: dict[str, Pipeline] = {CLICKSTREAM.name: CLICKSTREAM}


def get_pipeline(name: str, source: str = "config") -> Pipeline:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ConfigError(source, "pipeline", f"unknown pipeline {name!r}; known: {sorted(PIPELINES)}") from None
