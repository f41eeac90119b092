"""Ingest's micro-batches in steady state find their compiled code in Spark's code cache: the cache holds
every stage of a micro-batch, and the values that change per micro-batch (the tag, the batch id) reach the
generated code as references, never written into it."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.jvm import codegen_totals
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.streaming import MICRO_BATCH_LOGGER
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest

FILES = 8


def test_steady_micro_batches_compile_nothing(spark, tmp_path: Path) -> None:
    settings = load_settings(None, ["ingest.max_files_per_trigger=1", "speed.compact_every=1000"])
    locations = Locations.create(settings, tmp_path / "work")
    locations.ensure_local_dirs()
    # Duplicates and malformed lines in every file: every micro-batch commits master, speed and quarantine.
    ClickstreamGenerator(5, duplicate_fraction=0.1, malformed_fraction=0.1).write(
        locations.landing, 80 * FILES, files=FILES
    )
    compiled: list[float] = []

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "job", None) == "ingest":  # the end of a micro-batch's body
                compiled.append(codegen_totals(spark)["codegen_compilations"])

    logger, handler = logging.getLogger(MICRO_BATCH_LOGGER), Counter(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination(600)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(compiled) == FILES, compiled
    per_cycle = [after - before for before, after in itertools.pairwise(compiled)]
    # The first micro-batches compile. Then one stage compiles per micro-batch, on the driver and in its task:
    # the streaming read's, where Spark writes the batch time itself into the code. With Spark's default code
    # cache (100 classes) it was 26 or 27 per micro-batch; with the tag as a plain literal, 8.
    assert max(per_cycle[3:]) <= 2, per_cycle
