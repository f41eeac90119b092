"""The command line's grammar: every verb, its options and their help (``lambda-pipeline --help``).

``docs/reference/cli.md`` is generated from this parser (``python -m lambda_pipeline.cli.reference``).
"""

from __future__ import annotations

import argparse

from lambda_pipeline.cli.cluster import add_cluster_parser
from lambda_pipeline.cli.generate import add_generate_parser
from lambda_pipeline.cli.kafka import add_kafka_parser
from lambda_pipeline.cli.new import add_new_parser
from lambda_pipeline.cli.s3 import add_s3_parser
from lambda_pipeline.core.config_loader import add_override_option
from lambda_pipeline.deploy.emr_steps import add_emr_steps_parser
from lambda_pipeline.deploy.package_verb import add_package_parser

__all__ = ["DESCRIPTION", "build_parser"]

DESCRIPTION = (
    "A Lambda-architecture pipeline on PySpark and Delta Lake: one view definition, batch + speed, merged exactly."
)


def common_options(parser: argparse.ArgumentParser, *, pipeline: bool = True) -> None:
    parser.add_argument(
        "--config",
        help="YAML config file (default: $LAMBDA_PIPELINE_CONFIG, else the shipped local.yaml; "
        "'lambda-pipeline new DIR' writes a project with its own)",
    )
    parser.add_argument(
        "--workdir",
        help="root of tables, checkpoints and landing folder (default: $LAMBDA_PIPELINE_WORKDIR, else 'workdir')",
    )
    add_override_option(parser)
    if pipeline:
        parser.add_argument(
            "--pipeline",
            metavar="REF",
            help="the pipeline to run: a shipped name (clickstream, iot), 'package.module:ATTR' or "
            "'path/to/file.py:ATTR' (default: $LAMBDA_PIPELINE_PIPELINE, else the config's 'pipeline')",
        )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ivy's resolution report and Spark's own log lines too (jobs: LAMBDA_PIPELINE_VERBOSE=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambda-pipeline", description=DESCRIPTION)
    verbs = parser.add_subparsers(dest="verb", required=True)

    ingest = verbs.add_parser("ingest", help="stream the landing folder or Kafka topic into the master dataset")
    ingest.add_argument("--once", action="store_true", help="ingest what is there now, then stop")
    ingest.add_argument(
        "--accept-data-loss",
        action="store_true",
        help="resume although Kafka offsets ingest still needed aged out (the loss is recorded in quarantine)",
    )
    speed = verbs.add_parser(
        "speed",
        help="catch the speed partials up with master (ingest writes them itself; run this while ingest is stopped)",
    )
    speed.add_argument("--rebuild", action="store_true", help="rewrite every speed table from master")
    batch = verbs.add_parser("batch", help="recompute and publish the batch views")
    batch.add_argument(
        "--every",
        nargs="?",
        const="config",
        metavar="DURATION",
        help="run repeatedly; without a value, every batch.interval of the config",
    )
    batch.add_argument("--force", action="store_true", help="recompute even if master has not changed")
    batch.add_argument(
        "--rollback",
        action="store_true",
        help="serve the publication before the current one again (ingest stopped); the next batch moves on",
    )
    query = verbs.add_parser("query", help="read-only SQL over serving.*, batch.*, speed.*, master.*")
    query.add_argument("sql", help='e.g. "SELECT * FROM serving.page_activity ORDER BY window_start DESC"')
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")
    query.add_argument("--limit", type=int, default=1000, help="rows to print at most (default 1000)")
    query.add_argument(
        "--provenance",
        action="store_true",
        help="also print, on stderr, the pin (every table version read) and each view's freshness",
    )
    query.add_argument(
        "--as-of",
        metavar="PUBLICATION",
        help="answer at an earlier batch publication: its run id (or a unique prefix, as 'batch' prints it), or a "
        "UTC time such as 2026-12-06T07:41:00Z (ISO 8601; no offset means UTC) for the one served then",
    )
    query.add_argument(
        "--local",
        action="store_true",
        help="answer in this process even when a query server ('lambda-pipeline serve') runs for the work directory",
    )
    serve = verbs.add_parser(
        "serve", help="a warm query server on 127.0.0.1: read-only SQL over HTTP (docs/serving.md)"
    )
    serve.add_argument("--host", help="address to bind (default serve.host, 127.0.0.1); others require a token")
    serve.add_argument("--port", type=int, help="port (default serve.port, 8765; 0 for any free port)")
    maintain = verbs.add_parser(
        "maintain",
        help="compact and vacuum the tables (ingest and batch maintain their own); on S3 with Delta's default log "
        "store only while the jobs are stopped (docs/operations.md)",
    )
    maintain.add_argument(
        "--every",
        nargs="?",
        const="config",
        metavar="DURATION",
        help="run repeatedly; without a value, every maintenance.interval of the config",
    )
    maintain.add_argument(
        "--table", action="append", metavar="NAME", help="only this table (repeatable): master, batch.<view>, ..."
    )
    refresh = verbs.add_parser(
        "refresh",
        help="recompute a view from master after its definition changed, or backfill a new field (ingest stopped)",
    )
    refresh.add_argument("--view", help="the view to recompute (the others stay served)")
    refresh.add_argument(
        "--backfill",
        action="append",
        default=[],
        metavar="FIELD",
        help="fill a field added to the source for past events, from the raw text master keeps (repeatable)",
    )
    audit = verbs.add_parser(
        "audit", help="how far the speed layer's answer was from the batch's for the same events, per window"
    )
    audit.add_argument("--last", type=int, default=1, help="publications to audit, newest first (default 1)")
    audit.add_argument("--format", choices=("table", "json"), default="table")
    audit.add_argument(
        "--fail-above",
        type=float,
        metavar="SHARE",
        help="exit 3 when the share of events that differ is above this (e.g. 0.001)",
    )
    demo = verbs.add_parser("demo", help="generator -> ingest (master + speed) -> batch -> merged query")
    demo.add_argument("--events", type=int, default=20_000, help="valid events to generate (default 20000)")
    demo.add_argument("--seed", type=int, default=None, help="generator seed (default: new each run)")
    demo.add_argument(
        "--source",
        choices=("files", "kafka"),
        default=None,
        help="files: the landing folder; kafka: a local broker on 127.0.0.1 (started if needed) (default: config)",
    )
    demo.add_argument(
        "--dashboard",
        nargs="?",
        const=0.0,
        type=float,
        metavar="SECONDS",
        help="then keep the query server's dashboard up with a steady generator, ingest and a batch every minute "
        "(until Ctrl-C, or for SECONDS)",
    )
    demo.add_argument("--rate", type=float, default=50.0, help="events/s of the steady generator (default 50)")
    kafka = add_kafka_parser(verbs)
    s3 = add_s3_parser(verbs)
    generate = add_generate_parser(verbs)
    add_package_parser(verbs)  # no --config: one artifact serves every config
    add_new_parser(verbs)  # writes a project and its config: reads none
    add_cluster_parser(verbs)  # a local Spark cluster: serves any config
    add_emr_steps_parser(verbs)  # its own --config and --set: the jobs' work directory is the config's, on S3
    for sub in (ingest, speed, batch, query, serve, maintain, refresh, audit, demo, generate):
        common_options(sub)
    for sub in (kafka, s3):  # local services: no pipeline
        common_options(sub, pipeline=False)
    return parser
