"""What every verb of the command line shares: validated settings, locations, the pipeline, and Spark.

Its own module so that the verbs' modules import it without importing the parser that imports them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["Context", "pipeline_of"]

PIPELINE_VARIABLE = "LAMBDA_PIPELINE_PIPELINE"


def pipeline_of(args: argparse.Namespace, settings: Settings) -> Pipeline:
    """The pipeline a verb runs: ``--pipeline``, else ``--set pipeline=``, else $LAMBDA_PIPELINE_PIPELINE,
    else the config's ``pipeline`` key (``load_settings`` already put the last three in that order)."""
    from lambda_pipeline.core.config_loader import config_file
    from lambda_pipeline.pipelines.registry import load_pipeline

    config = config_file(args.config)
    given = getattr(args, "pipeline", None)
    if given:
        return load_pipeline(given, config_path=config, origin="--pipeline")
    origin = "--set" if any(o.strip().startswith("pipeline=") for o in args.overrides) else None
    if origin is None:
        origin = f"environment variable {PIPELINE_VARIABLE}" if os.environ.get(PIPELINE_VARIABLE) else str(config)
    return load_pipeline(settings.pipeline, config_path=config, origin=origin)


def _workdir_origin(args: argparse.Namespace, config: str) -> str:
    """Where the work directory came from, in the order they win: --workdir, --set, the environment, the config."""
    if args.workdir is not None:
        return "--workdir"
    if any(o.strip().startswith("workdir=") for o in args.overrides):
        return "--set"
    if os.environ.get("LAMBDA_PIPELINE_WORKDIR", "").strip():
        return "environment variable LAMBDA_PIPELINE_WORKDIR"
    return config


@dataclass
class Context:
    """What every verb needs: validated settings, locations, the pipeline, and (lazily) Spark."""

    settings: Settings
    locations: Locations
    pipeline: Pipeline
    pipeline_ref: str = "clickstream"
    """How the pipeline was named (``--pipeline`` or the config): what a printed next command repeats."""
    config: str | None = None
    """The --config given, if any: repeated in a printed next command too."""
    short_lived: bool = False
    """The verb answers one request and exits: Spark starts tuned for that (``get_spark(short_lived=...)``)."""
    _spark: SparkSession | None = None
    _started_spark: bool = False
    """Whether this context started the session (not spark-submit, not a caller that had one running)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        from lambda_pipeline.core.config_loader import config_file

        settings = load_settings(args.config, args.overrides)
        ref = getattr(args, "pipeline", None) or settings.pipeline
        pipeline = pipeline_of(args, settings)
        source = str(config_file(args.config))
        origin = _workdir_origin(args, source)
        locations = Locations.create(settings, args.workdir, source=source, workdir_source=origin)
        return cls(settings, locations, pipeline, pipeline_ref=ref, config=args.config)

    @property
    def jvm_packages(self) -> tuple[str, ...]:
        """Maven packages beyond Delta: the Kafka connector for a Kafka source, hadoop-aws for ``s3a://``."""
        from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE, hadoop_aws_coordinate

        kafka = (KAFKA_COORDINATE,) if self.settings.ingest.source == "kafka" else ()
        return kafka + ((hadoop_aws_coordinate(),) if self.locations.needs_s3a else ())

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            from lambda_pipeline.core.session import get_spark

            # The s3 section as fs.s3a.* settings, and the retention of the tables this job creates; an explicit
            # spark.conf entry of the same name wins.
            derived = {**self.settings.maintenance.table_defaults(), **self.settings.s3.spark_conf()}
            extra = {k: v for k, v in derived.items() if k not in self.settings.spark.conf}
            from pyspark.sql import SparkSession

            self._started_spark = SparkSession.getActiveSession() is None
            self._spark = get_spark(
                self.settings.spark, packages=self.jvm_packages, extra_conf=extra, short_lived=self.short_lived
            )
            self.locations.check_master(self._spark.sparkContext.master or "")  # spark-submit --master may differ
            self.pipeline.check(self._spark)  # every expression analysed before any job starts
        return self._spark

    @property
    def pipeline_option(self) -> str:
        """`` --config FILE --pipeline REF`` for a command printed for the user to run next, as far as needed."""
        config = f" --config {self.config}" if self.config else ""
        return config + ("" if self.pipeline_ref == "clickstream" else f" --pipeline {self.pipeline_ref}")

    def close(self) -> None:
        """Stop the session this context started, cleanly, while this process can still answer the JVM.

        Spark's listener bus delivers the streaming listeners' last events (a query's termination) to Python;
        a JVM left running as Python exits would print their connection errors.
        """
        if self._spark is not None and self._started_spark:
            self._spark.stop()
        self._spark = None
