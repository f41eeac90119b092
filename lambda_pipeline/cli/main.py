"""``lambda-pipeline``: ingest | batch | speed | query | serve | demo, one config and work directory for all.

Thin on purpose: parse arguments, load the config, call a function of a layer.
Errors a user can fix print as one line and exit non-zero; no stack trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lambda_pipeline.cli.context import Context
from lambda_pipeline.cli.generate import add_generate_parser, run_generate
from lambda_pipeline.cli.init import add_init_parser, run_init
from lambda_pipeline.cli.kafka import add_kafka_parser, run_kafka
from lambda_pipeline.cli.s3 import add_s3_parser, run_s3
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.deploy.artifact import add_package_parser, run_package
from lambda_pipeline.deploy.emr_steps import add_emr_steps_parser, run_emr_steps

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["build_parser", "main"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="YAML config file (default: $LAMBDA_PIPELINE_CONFIG, else the shipped local.yaml; "
        "'lambda-pipeline init DIR' writes editable copies)",
    )
    parser.add_argument(
        "--workdir",
        help="root of tables, checkpoints and landing folder (default: $LAMBDA_PIPELINE_WORKDIR, else 'workdir')",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set ingest.trigger='2 seconds' (repeatable)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ivy's resolution report and Spark's own log lines too (jobs: LAMBDA_PIPELINE_VERBOSE=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambda-pipeline", description=__doc__.splitlines()[0])
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
    speed.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # the verb always runs once now
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
        help="answer at an earlier batch publication (its run id, or a unique prefix, as 'batch' prints it)",
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
        "maintain", help="compact and vacuum every table; safe beside running jobs (docs/operations.md)"
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
    add_init_parser(verbs)  # writes the configs: needs none
    emr_steps = add_emr_steps_parser(verbs)
    for sub in (ingest, speed, batch, query, serve, maintain, refresh, audit, demo, kafka, emr_steps, generate, s3):
        _common(sub)
    return parser


def _print_rows(columns: list[str], rows: Sequence[Sequence[object]], fmt: str, limit: int) -> int:
    """Print at most ``limit`` of ``rows`` (one more says there are more) as a table, JSON lines or CSV."""
    shown = rows[:limit]
    if fmt == "json":
        for row in shown:
            print(json.dumps(dict(zip(columns, row, strict=True)), default=str))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[("" if v is None else v) for v in row] for row in shown])
    else:
        cells = [[("NULL" if v is None else str(v)) for v in row] for row in shown]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        line = "+".join("-" * (w + 2) for w in widths)
        print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        print(line)
        for r in cells:
            print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        if len(rows) > limit:
            print(f"... (more than {limit} rows; use --limit)")
    return len(shown)


def _print_frame(frame: DataFrame, fmt: str, limit: int) -> int:
    from pyspark.sql import Row

    def plain(value: object) -> object:  # JSON shows a nested row as an object
        return value.asDict(recursive=True) if isinstance(value, Row) else value

    rows = [tuple(plain(v) for v in row) for row in frame.limit(limit + 1).collect()]
    return _print_rows(frame.columns, rows, fmt, limit)


def _cmd_ingest(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.core.streaming import run_until_stopped
    from lambda_pipeline.ingestion.job import start_ingest

    settings = ctx.settings
    query = start_ingest(
        ctx.spark, ctx.pipeline, settings, ctx.locations, once=args.once, accept_data_loss=args.accept_data_loss
    )
    kafka = settings.ingest.kafka
    origin = (
        f"kafka {kafka.bootstrap_servers} {kafka.topic or kafka.subscribe_pattern}"
        if settings.ingest.source == "kafka"
        else ctx.locations.landing
    )
    print(f"ingest: watching {origin} -> {ctx.locations.master}" + (" (once)" if args.once else ""), flush=True)
    try:
        run_until_stopped([query], once=args.once)
    except Exception as exc:
        from lambda_pipeline.ingestion.data_loss import check_data_loss, is_data_loss_failure

        if settings.ingest.source == "kafka" and is_data_loss_failure(exc):
            # Offsets aged out while the job ran: report the exact ranges if they can be found.
            check_data_loss(ctx.spark, kafka, ctx.locations.checkpoint("ingest"), accept=False)
            raise LambdaError(
                f"Kafka reported data loss while ingest ran ({str(exc).strip().splitlines()[0]}); "
                "restart ingest to see the lost ranges, then decide on --accept-data-loss"
            ) from None
        raise
    return 0


# How long a long-running batch job started together with ingest waits for the master table.
MASTER_WAIT_SECONDS = 600.0


def _wait_for_master(ctx: Context, verb: str) -> None:
    from lambda_pipeline.core.tables import wait_for_table

    wait_for_table(
        ctx.spark,
        ctx.locations.master,
        timeout=MASTER_WAIT_SECONDS,
        on_wait=lambda m: print(f"{verb}: {m}", flush=True),
    )


def _cmd_speed(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.core.leases import Lease
    from lambda_pipeline.speed_layer.job import catch_up

    started = time.monotonic()
    # The speed tables are ingest's: the catch-up holds ingest's lease, so it never runs beside ingest.
    lease = Lease(ctx.spark, ctx.locations, "ingest", ctx.locations.master).acquire()
    try:
        written = catch_up(ctx.spark, ctx.pipeline, ctx.locations, rebuild=args.rebuild)
    finally:
        lease.release()
    what = "rebuilt" if args.rebuild else "caught up"
    tags = ", ".join(f"{view} {n} tag(s)" for view, n in written.items())
    print(f"speed: {what} from {ctx.locations.master} in {time.monotonic() - started:.1f}s: {tags}", flush=True)
    return 0


def _cmd_batch(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.batch_layer.job import run_batch

    if args.rollback:
        from lambda_pipeline.maintenance.rollback import rollback

        if args.every is not None or args.force:
            raise LambdaError("batch --rollback runs once: it takes neither --every nor --force")
        restored = rollback(ctx.spark, ctx.pipeline, ctx.locations)
        assert restored.restores is not None
        print(
            f"batch: rolled back: publication {restored.run_id[:8]} serves again {restored.restores[:8]} "
            f"(master version {restored.master_version}; views {restored.view_versions})"
        )
        return 0
    interval = _interval(args.every, ctx.settings.batch.interval)
    if interval is not None:
        _wait_for_master(ctx, "batch")
    while True:
        coverage, staged = run_batch(ctx.spark, ctx.pipeline, ctx.locations, force=args.force)
        if staged is None:
            print(f"batch: up to date, coverage = master version {coverage.master_version}")
        else:
            print(
                f"batch: published run {staged.run_id[:8]} covering master version {staged.master_version} "
                f"({staged.master_events} rows) in {staged.seconds:.1f}s; views {staged.view_versions}"
            )
        if interval is None:
            return 0
        time.sleep(interval)  # the schedule itself; Ctrl-C stops between runs


def _interval(every: str | None, configured: str) -> float | None:
    """Seconds between runs for ``--every`` (``config``: the configured interval), or None to run once."""
    if every is None:
        return None
    try:
        return duration_seconds(configured if every == "config" else every)
    except ValueError as exc:
        raise LambdaError(f"--every: {exc}") from None


def _cmd_refresh(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.maintenance.refresh import refresh

    started = time.monotonic()
    done = refresh(ctx.spark, ctx.pipeline, ctx.locations, args.view, backfill=args.backfill)
    for line in done.backfill.lines() if done.backfill else []:
        print(f"backfill: {line}")
    recomputed = f"{', '.join(done.views)} recomputed from master" if done.views else "no view reads those fields"
    print(
        f"refresh: {recomputed}; batch published in run {done.coverage.run_id[:8]} "
        f"(master version {done.coverage.master_version}) in {time.monotonic() - started:.1f}s"
    )
    return 0


AUDIT_ALERT = 3
"""Exit code of ``audit --fail-above`` when the layers differed by more than allowed."""


def _cmd_audit(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.maintenance.audit import audit

    if args.last < 1:
        raise LambdaError(f"audit --last: expected 1 or more publications, got {args.last}")
    audits = audit(ctx.spark, ctx.pipeline, ctx.locations, last=args.last)
    if args.format == "json":
        for one in audits:
            print(json.dumps(one.as_dict(), default=str))
    else:
        for one in audits:
            print(
                f"audit: {one.view}, publication {one.publication[:8]} (tags {one.tags[0] + 1}..{one.tags[1]}): "
                f"{one.differing:g} of {one.events:g} events differ ({one.share:.4%})"
                + (f"; {one.note}" if one.note else "")
            )
            differing = [r for r in one.rows if r.difference]
            if differing:
                print(f"  {'window_start':<20} {'measure':<16} {'speed':>12} {'batch':>12} {'difference':>12}")
            for r in differing:
                print(
                    f"  {r.window_start:%Y-%m-%d %H:%M:%S}  {r.measure:<16} {r.speed:>12g} {r.batch:>12g} "
                    f"{r.difference:>+12g}"
                )
    worst = max((one.share for one in audits), default=0.0)
    if args.fail_above is not None and worst > args.fail_above:
        print(f"audit: {worst:.4%} of events differ, above --fail-above {args.fail_above:g}", file=sys.stderr)
        return AUDIT_ALERT
    return 0


def _cmd_maintain(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.core.compact_vacuum import INGESTS, Maintained, maintain
    from lambda_pipeline.core.leases import Lease, LeaseHeld

    interval = _interval(args.every, ctx.settings.maintenance.interval)

    def report(done: Maintained) -> None:
        print(f"maintain: {done.describe()}", flush=True)

    ingests = sorted(set(args.table or []) & INGESTS)
    while True:
        started = time.monotonic()
        lease = None
        if ingests:  # only while ingest is stopped: it tags master commits with the versions it predicts
            try:
                lease = Lease(ctx.spark, ctx.locations, "ingest", ctx.locations.master).acquire()
            except LeaseHeld as held:
                raise LambdaError(
                    f"maintain --table {' --table '.join(ingests)}: {held}. A running ingest maintains master and "
                    "quarantine itself, every maintenance.interval"
                ) from None
        try:
            done = maintain(ctx.spark, ctx.pipeline, ctx.locations, only=args.table, on_table=report)
        finally:
            if lease is not None:
                lease.release()
        retention = ctx.settings.maintenance.retention
        print(f"maintain: {len(done)} table(s) in {time.monotonic() - started:.1f}s (retention {retention})")
        if interval is None:
            return 0
        time.sleep(interval)  # the schedule itself; Ctrl-C stops between runs


def _cmd_query(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.serving_layer.catalog import ServingLayer

    if not args.local and _query_through_server(ctx, args):
        return 0
    from pyspark.sql import SparkSession

    ctx.short_lived = SparkSession.getActiveSession() is None  # this process starts Spark for one query
    serving = ServingLayer(ctx.spark, ctx.pipeline, ctx.locations)
    try:
        answer = serving.answer(args.sql, as_of=args.as_of)
        _print_frame(answer.frame, args.format, args.limit)
        if args.provenance:
            print(json.dumps({"pin": answer.pin.as_dict()}, default=str), file=sys.stderr)
            for provenance in serving.provenances(answer):
                print(json.dumps({"provenance": provenance.as_dict()}, default=str), file=sys.stderr)
    finally:
        if ctx.short_lived:
            ctx.spark.stop()  # a clean stop: a JVM torn down mid-cleanup prints a stack trace on exit
    return 0


def _query_through_server(ctx: Context, args: argparse.Namespace) -> bool:
    """Answer through the work directory's running query server, if one answers (no JVM start here)."""
    from lambda_pipeline.serving_layer.client import running_server
    from lambda_pipeline.serving_layer.server import server_file

    record = server_file(ctx.locations)
    client = running_server(record) if record is not None and record.exists() else None
    if client is None:
        return False
    print(f"query: answered by the query server at {client.url} (--local to answer in this process)", file=sys.stderr)
    answer = client.query(args.sql, as_of=args.as_of, max_rows=args.limit + 1)
    rows = list(zip(*(column.to_pylist() for column in answer.table.columns), strict=True))
    _print_rows(answer.table.column_names, rows, args.format, args.limit)
    if args.provenance:
        print(json.dumps({"pin": answer.pin}, default=str), file=sys.stderr)
        for provenance in answer.provenance:
            print(json.dumps({"provenance": provenance}, default=str), file=sys.stderr)
    return True


def _cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from lambda_pipeline.core.config import ServeSettings
    from lambda_pipeline.serving_layer.server import QueryServer

    given = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = ServeSettings.model_validate({**ctx.settings.serve.model_dump(), **given})
    except ValidationError as exc:  # a port out of range, say
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise LambdaError(f"serve --{where} {given.get(where)!r}: {error['msg']}") from None
    server = QueryServer(ctx.spark, ctx.pipeline, ctx.locations, settings)
    server.run(
        on_ready=lambda url: print(
            f"serve: answering read-only SQL over {ctx.locations.workdir} at {url}/query (Ctrl-C stops)", flush=True
        )
    )
    return 0


def _cmd_demo(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.cli.demo import Live, run_demo

    live = None if args.dashboard is None else Live(rate=args.rate, seconds=args.dashboard or None)
    run_demo(ctx, events=args.events, seed=args.seed, live=live)
    return 0


COMMANDS: dict[str, Callable[[Context, argparse.Namespace], int]] = {
    "ingest": _cmd_ingest,
    "speed": _cmd_speed,
    "batch": _cmd_batch,
    "query": _cmd_query,
    "serve": _cmd_serve,
    "maintain": _cmd_maintain,
    "audit": _cmd_audit,
    "refresh": _cmd_refresh,
    "demo": _cmd_demo,
    "kafka": run_kafka,
    "s3": run_s3,
    "generate": run_generate,
    "emr-steps": lambda ctx, args: run_emr_steps(ctx.settings, args),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ["LAMBDA_PIPELINE_VERBOSE"] = "1"  # read by the session factory, and by the jobs it starts
    if getattr(args, "source", None):
        args.overrides = [*args.overrides, f"ingest.source={args.source}"]
    try:
        if args.verb == "package":
            return run_package(args)
        if args.verb == "init":
            return run_init(args)
        ctx = Context.from_args(args)
        return COMMANDS[args.verb](ctx, args)
    except LambdaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from pyspark.errors import PySparkException

        if isinstance(exc, PySparkException):
            first = str(exc).strip().splitlines()[0]
            print(f"error: Spark refused the request: {first}", file=sys.stderr)
            return 1
        s3_problem = _s3_access_problem(exc)
        if s3_problem:
            print(f"error: {s3_problem}", file=sys.stderr)
            return 1
        raise


def _s3_access_problem(exc: BaseException) -> str | None:
    """One line for S3 refusing the job (no credentials, access denied), instead of a Java stack trace."""
    text = str(exc)
    for marker, advice in (
        ("NoAuthWithAWSException", "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with an instance role"),
        ("AccessDeniedException", "check the credentials' permissions on the bucket (and s3.endpoint)"),
    ):
        if marker in text:
            detail = next((line.strip() for line in text.splitlines() if marker in line), marker)
            return f"S3 refused the job: {detail[:300]}; {advice} (see docs/s3.md)"
    return None


if __name__ == "__main__":
    sys.exit(main())
