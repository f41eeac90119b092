"""The verbs that read a work directory: each calls one function of a layer and prints what it returns.

Loops, leases and waits live in the functions they call (the layers, ``pipelines/ingest.py``,
``lambda_pipeline/maintenance``); here are only the words a person reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from lambda_pipeline.cli.context import Context
from lambda_pipeline.cli.generate import run_generate
from lambda_pipeline.cli.kafka import run_kafka
from lambda_pipeline.cli.output import print_audits, print_frame, print_rows
from lambda_pipeline.cli.s3 import run_s3
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import LambdaError

__all__ = ["AUDIT_ALERT", "COMMANDS"]

AUDIT_ALERT = 3
"""Exit code of ``audit --fail-above`` when the layers differed by more than allowed."""


def _every(every: str | None, configured: str) -> float | None:
    """Seconds between runs for ``--every`` (``config``: the configured interval), or None to run once."""
    if every is None:
        return None
    try:
        return duration_seconds(configured if every == "config" else every)
    except ValueError as exc:
        raise LambdaError(f"--every: {exc}") from None


def _say(line: str) -> None:
    print(line, flush=True)


def ingest(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.pipelines.ingest import run_ingest

    def watching(origin: str) -> None:
        _say(f"ingest: watching {origin} -> {ctx.locations.master}" + (" (once)" if args.once else ""))

    run_ingest(
        ctx.spark,
        ctx.pipeline,
        ctx.settings,
        ctx.locations,
        once=args.once,
        accept_data_loss=args.accept_data_loss,
        on_start=watching,
    )
    return 0


def speed(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.speed_layer.catch_up import run_catch_up

    started = time.monotonic()
    written = run_catch_up(ctx.spark, ctx.pipeline, ctx.locations, rebuild=args.rebuild)
    what = "rebuilt" if args.rebuild else "caught up"
    tags = ", ".join(f"{view} {n} tag(s)" for view, n in written.items())
    _say(f"speed: {what} from {ctx.locations.master} in {time.monotonic() - started:.1f}s: {tags}")
    return 0


def batch(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.batch_layer.job import StagedBatch, run_batches
    from lambda_pipeline.core.coverage import Coverage

    if args.rollback:
        if args.every is not None or args.force:
            raise LambdaError("batch --rollback runs once: it takes neither --every nor --force")
        return _rollback(ctx)

    def report(coverage: Coverage, staged: StagedBatch | None) -> None:
        if staged is None:
            _say(f"batch: up to date, coverage = master version {coverage.master_version}")
        else:
            _say(
                f"batch: published run {staged.run_id[:8]} covering master version {staged.master_version} "
                f"({staged.master_events} rows) in {staged.seconds:.1f}s; views {staged.view_versions}"
            )

    every = _every(args.every, ctx.settings.batch.interval)
    run_batches(
        ctx.spark,
        ctx.pipeline,
        ctx.locations,
        every=every,
        force=args.force,
        on_run=report,
        on_wait=lambda message: _say(f"batch: {message}"),
        on_maintained=lambda done: _say(f"batch: maintain {done.describe()}"),
    )
    return 0


def _rollback(ctx: Context) -> int:
    from lambda_pipeline.maintenance.rollback import rollback

    restored = rollback(ctx.spark, ctx.pipeline, ctx.locations)
    assert restored.restores is not None
    _say(
        f"batch: rolled back: publication {restored.run_id[:8]} serves again {restored.restores[:8]} "
        f"(master version {restored.master_version}; views {restored.view_versions})"
    )
    return 0


def refresh(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.maintenance.refresh import refresh as recompute

    started = time.monotonic()
    done = recompute(ctx.spark, ctx.pipeline, ctx.locations, args.view, backfill=args.backfill)
    for line in done.backfill.lines() if done.backfill else []:
        _say(f"backfill: {line}")
    recomputed = f"{', '.join(done.views)} recomputed from master" if done.views else "no view reads those fields"
    _say(
        f"refresh: {recomputed}; batch published in run {done.coverage.run_id[:8]} "
        f"(master version {done.coverage.master_version}) in {time.monotonic() - started:.1f}s"
    )
    return 0


def audit(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.maintenance.audit import audit as compare

    if args.last < 1:
        raise LambdaError(f"audit --last: expected 1 or more publications, got {args.last}")
    audits = compare(ctx.spark, ctx.pipeline, ctx.locations, last=args.last)
    print_audits(audits, args.format)
    worst = max((one.share for one in audits), default=0.0)
    if args.fail_above is not None and worst > args.fail_above:
        print(f"audit: {worst:.4%} of events differ, above --fail-above {args.fail_above:g}", file=sys.stderr)
        return AUDIT_ALERT
    return 0


def maintain(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.maintenance.maintain import run_maintenance

    started = [time.monotonic()]

    def finished(done: Sequence[object]) -> None:
        retention = ctx.settings.maintenance.retention
        _say(f"maintain: {len(done)} table(s) in {time.monotonic() - started[0]:.1f}s (retention {retention})")
        started[0] = time.monotonic()

    run_maintenance(
        ctx.spark,
        ctx.pipeline,
        ctx.locations,
        tables=args.table,
        every=_every(args.every, ctx.settings.maintenance.interval),
        on_table=lambda done: _say(f"maintain: {done.describe()}"),
        on_run=finished,
    )
    return 0


def query(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.serving_layer.catalog import ServingLayer
    from lambda_pipeline.serving_layer.client import query_running_server

    if not args.local:
        served = query_running_server(ctx.locations, args.sql, as_of=args.as_of, max_rows=args.limit + 1)
        if served is not None:
            where = f"query: answered by the query server at {served.url} (--local to answer in this process)"
            print(where, file=sys.stderr)
            table = served.answer.table
            rows = list(zip(*(column.to_pylist() for column in table.columns), strict=True))
            print_rows(table.column_names, rows, args.format, args.limit)
            if args.provenance:
                _provenance(served.answer.pin, served.answer.provenance)
            return 0
    from pyspark.sql import SparkSession

    ctx.short_lived = SparkSession.getActiveSession() is None  # this process starts Spark for one query
    serving = ServingLayer(ctx.spark, ctx.pipeline, ctx.locations)
    answer = serving.answer(args.sql, as_of=args.as_of)
    print_frame(answer.frame, args.format, args.limit)
    if args.provenance:
        _provenance(answer.pin.as_dict(), [p.as_dict() for p in serving.provenances(answer)])
    return 0


def _provenance(pin: object, provenances: Sequence[object]) -> None:
    print(json.dumps({"pin": pin}, default=str), file=sys.stderr)
    for provenance in provenances:
        print(json.dumps({"provenance": provenance}, default=str), file=sys.stderr)


def serve(ctx: Context, args: argparse.Namespace) -> int:
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
        on_ready=lambda url: _say(
            f"serve: answering read-only SQL over {ctx.locations.workdir} at {url}/query (Ctrl-C stops)"
        )
    )
    return 0


def demo(ctx: Context, args: argparse.Namespace) -> int:
    from lambda_pipeline.cli.demo import Live, run_demo

    live = None if args.dashboard is None else Live(rate=args.rate, seconds=args.dashboard or None)
    run_demo(ctx, events=args.events, seed=args.seed, live=live)
    return 0


COMMANDS: dict[str, Callable[[Context, argparse.Namespace], int]] = {
    "ingest": ingest,
    "speed": speed,
    "batch": batch,
    "query": query,
    "serve": serve,
    "maintain": maintain,
    "audit": audit,
    "refresh": refresh,
    "demo": demo,
    "kafka": run_kafka,
    "s3": run_s3,
    "generate": run_generate,
}
