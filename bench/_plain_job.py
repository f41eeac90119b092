"""The peer of the pipeline in bench/steady_freshness.py: the Kafka-to-Delta job a user would write by hand, and
a client that polls its table.

    python bench/_plain_job.py run --bootstrap HOST:PORT --topic T --table PATH --checkpoint PATH
    python bench/_plain_job.py poll --table PATH --every 1.0 --out FILE

``run``: read the topic, ``from_json`` with the events' schema, append to a Delta table, Spark's default trigger
(the next micro-batch as soon as the last ends). Its one setting beyond Spark's defaults is the one the pipeline
also uses: ``spark.databricks.delta.snapshotPartitions=2`` (Delta rebuilds a snapshot with 50 tasks otherwise).
No dedup, no quarantine, no views: what the pipeline adds is what the comparison prices.

``poll``: a warm Spark session that counts the table's rows every ``--every`` seconds, as a user's client would,
and appends ``<unix time> <rows>`` to ``--out`` after each answer (``-1`` while the table does not exist yet).
Both run until SIGTERM. Each is its own process (``local[2]``), as the pipeline's ingest and server are.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA = "event_id STRING, user_id STRING, page STRING, event_time TIMESTAMP, duration_ms BIGINT"


def session(name: str) -> Any:
    """A plain session: Delta and Kafka jars (from the project's local cache, as ``--packages`` would fetch them)."""
    from pyspark.sql import SparkSession

    from lambda_pipeline.core.jvm_packages import DELTA_COORDINATE, KAFKA_COORDINATE, resolve_jars, token_provider_jar

    jars = [*resolve_jars((DELTA_COORDINATE, KAFKA_COORDINATE), {}), str(token_provider_jar())]
    spark = (
        SparkSession.builder.master("local[2]")
        .appName(name)
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


def run(args: argparse.Namespace) -> None:
    from pyspark.sql import functions as F

    spark = session("plain-kafka-to-delta")
    lines = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    events = lines.select(F.from_json(F.col("value").cast("string"), SCHEMA).alias("e")).select("e.*")
    query = events.writeStream.format("delta").option("checkpointLocation", args.checkpoint).start(args.table)
    signal.signal(signal.SIGTERM, lambda *_: query.stop())
    query.awaitTermination()


def poll(args: argparse.Namespace) -> None:
    spark = session("plain-client")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    with open(args.out, "a", buffering=1) as out:
        while not stop:
            started = time.time()
            try:
                rows = spark.read.format("delta").load(args.table).count()
            except Exception:  # the job has not created the table yet
                rows = -1
            out.write(f"{time.time():.3f} {rows} {(time.time() - started) * 1000:.1f}\n")
            time.sleep(max(0.0, args.every - (time.time() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    job = sub.add_parser("run")
    job.add_argument("--bootstrap", required=True)
    job.add_argument("--topic", required=True)
    job.add_argument("--table", required=True)
    job.add_argument("--checkpoint", required=True)
    client = sub.add_parser("poll")
    client.add_argument("--table", required=True)
    client.add_argument("--every", type=float, default=1.0)
    client.add_argument("--out", required=True)
    args = parser.parse_args()
    run(args) if args.mode == "run" else poll(args)


if __name__ == "__main__":
    main()
