"""The ingest job as the pipeline runs it: ingestion's micro-batches, with the speed layer's writer inside.

The layers never import each other; they are composed here. Each micro-batch appends its events to master
under one ingest tag, and the speed layer writes every view's partials of that tag in the same micro-batch
(the one hop): an event is fresh in the serving layer as soon as its micro-batch ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import run_until_stopped
from lambda_pipeline.ingestion import job
from lambda_pipeline.ingestion.data_loss import check_data_loss, is_data_loss_failure
from lambda_pipeline.speed_layer.writer import SpeedWriter

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["run_ingest", "start_ingest"]


def start_ingest(
    spark: SparkSession,
    pipeline: Pipeline,
    settings: Settings,
    locations: Locations,
    *,
    once: bool = False,
    accept_data_loss: bool = False,
) -> StreamingQuery:
    """Start ingest with the speed layer's writer (``once``: what is there now, then stop)."""
    return job.start(
        spark,
        pipeline,
        settings,
        locations,
        writers=(SpeedWriter.for_ingest,),
        once=once,
        accept_data_loss=accept_data_loss,
    )


def run_ingest(
    spark: SparkSession,
    pipeline: Pipeline,
    settings: Settings,
    locations: Locations,
    *,
    once: bool = False,
    accept_data_loss: bool = False,
    on_start: Callable[[str], None] = lambda origin: None,
) -> None:
    """Run ingest until it is stopped (SIGINT/SIGTERM, between micro-batches) or, ``once``, until done.

    ``on_start`` hears what ingest watches once its stream runs. Kafka offsets that aged out while the job
    ran stop it with the exact ranges lost, when they can be found, and what to decide.
    """
    query = start_ingest(spark, pipeline, settings, locations, once=once, accept_data_loss=accept_data_loss)
    kafka = settings.ingest.kafka
    if settings.ingest.source == "kafka":
        on_start(f"kafka {kafka.bootstrap_servers} {kafka.topic or kafka.subscribe_pattern}")
    else:
        on_start(locations.landing)
    try:
        run_until_stopped([query], once=once)
    except Exception as exc:
        if settings.ingest.source == "kafka" and is_data_loss_failure(exc):
            check_data_loss(spark, kafka, locations.checkpoint("ingest"), accept=False)
            raise LambdaError(
                f"Kafka reported data loss while ingest ran ({str(exc).strip().splitlines()[0]}); "
                "restart ingest to see the lost ranges, then decide on --accept-data-loss"
            ) from None
        raise
