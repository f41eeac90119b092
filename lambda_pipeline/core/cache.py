"""The project's cache folder on this machine: what is fetched or recorded once and reused by every run.

Resolved jar lists, directly fetched jars, Maven-resolved broker jars, the class-data archives and the
quiet log4j configuration all live under it, so one variable moves them all.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$LAMBDA_PIPELINE_CACHE/lambda-pipeline``, else ``$XDG_CACHE_HOME/lambda-pipeline``, else
    ``~/.cache/lambda-pipeline``; read at each call, so a job or a test may point it elsewhere."""
    base = os.environ.get("LAMBDA_PIPELINE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "lambda-pipeline" if base else Path.home() / ".cache" / "lambda-pipeline"
