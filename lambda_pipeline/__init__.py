"""lambda-pipeline: a Lambda-architecture pipeline on PySpark and Delta Lake.

What a user declares a pipeline with, and nothing internal::

    import lambda_pipeline as lp

    readings = lp.EventSource("readings", schema, id_column="reading_id", time_column="ts",
                              time_format="epoch_millis")
    per_site = lp.View("site_temperature", readings, keys=("site",),
                       columns={"site": "device.site", "temperature": "metrics.temperature_c"},
                       window=lp.TumblingWindow("ts", "5 minutes"),
                       measures={"readings": lp.count(), "p95": lp.approx_quantile("temperature", 0.95)})
    PIPELINE = lp.Pipeline("iot", readings, [per_site])

Point a config's ``pipeline`` key (or ``--pipeline``) at ``path/to/file.py:PIPELINE`` or
``package.module:PIPELINE`` (docs/your-own-pipeline.md). The rest of the package (``core``, the layers,
ingestion, the command line) is internal: imports flow core -> ingestion and layers -> pipelines, CLI.
"""

from lambda_pipeline.core.aggregates import (
    Aggregate,
    approx_distinct,
    approx_quantile,
    avg_of,
    count,
    max_of,
    min_of,
    sum_of,
)
from lambda_pipeline.core.events import EventSource
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.views import View
from lambda_pipeline.core.windows import HoppingWindow, TumblingWindow

__all__ = [
    "Aggregate",
    "EventSource",
    "HoppingWindow",
    "Pipeline",
    "TumblingWindow",
    "View",
    "approx_distinct",
    "approx_quantile",
    "avg_of",
    "count",
    "max_of",
    "min_of",
    "sum_of",
]
