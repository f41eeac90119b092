"""What the benchmark scripts share: common options, percentiles, the environment record."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import platform
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lambda_pipeline.core.config import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_common_args(parser: argparse.ArgumentParser, name: str, override_help: str = "") -> None:
    """--workdir, --keep, --config, --override and --output, the same in every script."""
    parser.add_argument(
        "--workdir", default=None, help="work directory (default: a fresh temp dir, removed at the end)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp work directory")
    parser.add_argument("--config", default=None, help="YAML config (default: conf/local.yaml)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"config override like the CLI's --set (repeatable){override_help}",
    )
    parser.add_argument("--output", default=str(RESULTS_DIR / f"{name}.json"), help="JSON results file")


@contextlib.contextmanager
def work_directory(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """``--workdir``, or a fresh temporary directory removed at the end unless ``--keep``."""
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=prefix)) if own else Path(args.workdir).resolve()
    try:
        yield workdir
    finally:
        if own and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def add_generator_args(parser: argparse.ArgumentParser) -> None:
    """--seed and the generator's late, duplicate and malformed fractions."""
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument("--late-fraction", type=float, default=0.05)
    parser.add_argument("--duplicate-fraction", type=float, default=0.03)
    parser.add_argument("--malformed-fraction", type=float, default=0.02)


def generator_mix(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``add_generator_args``, for the results file."""
    return {
        "seed": args.seed,
        "late_fraction": args.late_fraction,
        "duplicate_fraction": args.duplicate_fraction,
        "malformed_fraction": args.malformed_fraction,
    }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (q in 0..100), like numpy's default."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: list[float], scale: float = 1.0) -> dict[str, float | int]:
    """n, p50, p95, p99, min, mean, max of ``values`` times ``scale`` (1000 turns seconds into ms)."""
    scaled = [v * scale for v in values]
    return {
        "n": len(scaled),
        "p50": percentile(scaled, 50),
        "p95": percentile(scaled, 95),
        "p99": percentile(scaled, 99),
        "min": min(scaled) if scaled else math.nan,
        "mean": statistics.fmean(scaled) if scaled else math.nan,
        "max": max(scaled) if scaled else math.nan,
    }


def jvm_max_heap_mb(spark: SparkSession) -> int:
    runtime = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()  # type: ignore[union-attr]
    return int(runtime.maxMemory()) // 2**20


def environment(spark: SparkSession, settings: Settings) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "pyspark": spark.version,
        "delta_spark": importlib.metadata.version("delta-spark"),
        "cpu_count": os.cpu_count(),
        "spark_master": settings.spark.master,
        "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
        "driver_memory": spark.conf.get("spark.driver.memory", "default (1g)"),
        "jvm_max_heap_mb": jvm_max_heap_mb(spark),
        "aqe": spark.conf.get("spark.sql.adaptive.enabled"),
    }


def clean(value: Any) -> Any:
    """NaN -> None, recursively, so that the results file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def write_results(path: str, name: str, body: dict[str, Any]) -> None:
    """The results file: which benchmark, when, the exact command, then the script's own fields."""
    import json
    import sys
    from datetime import datetime, timezone

    record = {
        "benchmark": name,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **body,
    }
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(clean(record), indent=2, default=str) + "\n", encoding="utf-8")
    print(f"results written to {output}")
