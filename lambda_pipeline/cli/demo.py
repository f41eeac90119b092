"""The demo: generator -> ingest (master + speed) -> batch -> more events -> ingest -> merged query.

With ``--source kafka`` the generator produces to a topic of the project's own
broker on 127.0.0.1 (started for the demo and stopped after it, unless one was
already running), including the message kinds only a broker carries.

The second wave of events is ingested after the batch ran, so the speed layer
alone covers it and the merge is visible in the layer shares printed at the end.
Re-running on the same work directory adds new events on top of the old ones.

Any pipeline runs: its events come from :func:`~lambda_pipeline.cli.generate.generator_for`. Only the
clickstream demo's generator knows the truth to reconcile against (each layer's share of the events);
for another pipeline the demo shows each merged view, the master dataset and the quarantine.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_pipeline.cli.generate import generator_for
from lambda_pipeline.core.errors import EnvironmentProblem, LambdaError
from lambda_pipeline.core.locations import local_path
from lambda_pipeline.pipelines.generator import ClickstreamGenerator, EventGenerator

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from lambda_pipeline.cli.context import Context
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker
    from lambda_pipeline.serving_layer.catalog import ServingLayer

__all__ = ["DEMO_MIN_EVENTS", "Live", "run_demo"]

DEMO_MIN_EVENTS = 10


@dataclass(frozen=True)
class Live:
    """``demo --dashboard``: after the demo, keep the pipeline moving under the dashboard."""

    rate: float = 50.0
    """valid events per second from the steady generator"""
    batch_every: float = 60.0
    """seconds between two batch runs, so that the batch boundary moves on the page"""
    seconds: float | None = None
    """how long to stay up (None: until Ctrl-C)"""


class _Steps:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}  (+{time.perf_counter() - self.t0:.1f}s)", flush=True)


def run_demo(ctx: Context, *, events: int, seed: int | None = None, live: Live | None = None) -> None:
    from lambda_pipeline.batch_layer.job import run_batch
    from lambda_pipeline.pipelines.ingest import start_ingest
    from lambda_pipeline.serving_layer.catalog import ServingLayer

    if events < DEMO_MIN_EVENTS:
        raise LambdaError(
            f"demo --events {events}: the demo needs at least {DEMO_MIN_EVENTS} events (four fifths go to the batch "
            "layer, the rest to the speed layer only); try the default, --events 20000"
        )
    kafka = ctx.settings.ingest.source == "kafka"
    step = _Steps(8 if kafka else 7)
    loc = ctx.locations
    loc.ensure_local_dirs()
    seed = seed if seed is not None else time.time_ns() % 1_000_000_007
    generator = generator_for(ctx.pipeline, seed)
    first_wave, second_wave = events * 4 // 5, events - events * 4 // 5

    broker = None
    if kafka:
        broker = _local_broker(ctx)
        step(f"Kafka broker {ctx.settings.ingest.kafka.bootstrap_servers}, topic {ctx.settings.ingest.kafka.topic}")
    step(f"work directory {loc.workdir}; starting Spark")
    spark = ctx.spark
    try:
        malformed = _send(ctx, generator, first_wave, "first")
        step(f"generated the first wave ({first_wave} events, {sum(malformed.values())} bad or repeated)")
        start_ingest(spark, ctx.pipeline, ctx.settings, loc, once=True).awaitTermination()
        step("ingested the first wave into the master dataset")
        coverage, _ = run_batch(spark, ctx.pipeline, loc)
        step(f"batch layer published coverage = master version {coverage.master_version}")

        malformed += _send(ctx, generator, second_wave, "second")
        start_ingest(spark, ctx.pipeline, ctx.settings, loc, once=True).awaitTermination()
        step(
            f"generated and ingested a second wave of {second_wave} events (after the batch): each ingest "
            "micro-batch wrote master and the speed partials of its tag"
        )

        serving = ServingLayer(spark, ctx.pipeline, loc)
        serving.take_pin()
        step("serving layer pinned: serving.*, batch.*, speed.*, master.* at one consistent set of versions")
        if isinstance(generator, ClickstreamGenerator):
            _report(ctx, serving, malformed)
        else:
            _report_views(ctx, serving)
        if live is not None:
            _keep_live(ctx, generator, live)
    finally:
        if broker is not None:
            broker.stop()
            print(f"stopped the demo's Kafka broker (its data stays in {broker.base_dir})")


def _keep_live(ctx: Context, generator: EventGenerator, live: Live) -> None:
    """The query server and its dashboard, ingest streaming, a steady generator and a batch every
    ``live.batch_every`` seconds, all in this process, until Ctrl-C (or ``live.seconds``)."""
    from lambda_pipeline.batch_layer.job import run_batch
    from lambda_pipeline.cli.generate import make_sink
    from lambda_pipeline.core.streaming import raise_failure, stop_between_batches, wait_for_a_stop
    from lambda_pipeline.pipelines.ingest import start_ingest
    from lambda_pipeline.serving_layer.server import QueryServer

    spark, loc = ctx.spark, ctx.locations
    server = QueryServer(spark, ctx.pipeline, loc, ctx.settings.serve).start()
    query = start_ingest(spark, ctx.pipeline, ctx.settings, loc)
    sink = make_sink(ctx, generator, ctx.settings.ingest.source)
    stop = threading.Event()

    def generate() -> None:
        while not stop.wait(1.0):
            sink.send(int(live.rate), 0)
        sink.flush()

    def batches() -> None:
        while not stop.wait(live.batch_every):
            try:
                coverage, _ = run_batch(spark, ctx.pipeline, loc)
                print(f"live: batch published, coverage = master version {coverage.master_version}", flush=True)
            except Exception as exc:  # keep the page moving; the next run recomputes everything anyway
                print(f"live: batch failed ({str(exc).splitlines()[0]}); retrying in {live.batch_every:g}s", flush=True)

    workers = [threading.Thread(target=work, daemon=True) for work in (generate, batches)]
    for worker in workers:
        worker.start()
    print(
        f"\nlive: dashboard at {server.url}/dashboard; {live.rate:g} events/s into {sink.where}, ingest running, "
        f"a batch every {live.batch_every:g}s" + (f", for {live.seconds:g}s" if live.seconds else "; Ctrl-C stops"),
        flush=True,
    )
    try:
        if wait_for_a_stop([query], seconds=live.seconds):
            print("live: stopping", flush=True)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=max(60.0, live.batch_every))
        stop_between_batches(query)
        server.stop()
    raise_failure([query])


def _local_broker(ctx: Context) -> KafkaBroker | None:
    """Start the project's broker for the demo when the config points at loopback and none answers."""
    from lambda_pipeline.local_services.kafka_admin import create_topic
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker

    kafka = ctx.settings.ingest.kafka
    host, _, port = kafka.bootstrap_servers.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        create_topic(kafka.bootstrap_servers, str(kafka.topic), kafka.partitions)
        return None  # a real cluster: use it as it is
    workdir = local_path(ctx.locations.workdir)
    if workdir is None:
        raise EnvironmentProblem(
            f"the demo's Kafka broker keeps its storage on this machine, but the work directory is "
            f"{ctx.locations.workdir}; pass a local --workdir"
        )
    broker = KafkaBroker(workdir / "kafka", port=int(port))
    ours = not broker.status().running  # else started by 'lambda-pipeline kafka start': leave it running
    if ours:
        broker.start()
    create_topic(kafka.bootstrap_servers, str(kafka.topic), kafka.partitions)
    return broker if ours else None


def _send(ctx: Context, generator: EventGenerator, events: int, wave: str) -> Counter[str]:
    """One wave of events into the landing folder or the topic; the bad lines by kind."""
    if ctx.settings.ingest.source != "kafka":
        written = generator.write(ctx.locations.landing, events, files=4 if wave == "first" else 2, spark=ctx.spark)
        return sum((f.malformed for f in written), Counter()) + Counter(duplicate=sum(f.duplicates for f in written))
    from lambda_pipeline.cli.kafka_producer import KafkaEventProducer

    producer = KafkaEventProducer(ctx.settings.ingest.kafka)
    values, sent = generator.messages(events, hostile_fraction=0.01)
    producer.send(values)
    producer.close()
    return sent.malformed + sent.hostile + Counter(duplicate=sent.duplicates)


def _report(ctx: Context, serving: ServingLayer, malformed: Counter[str]) -> None:
    def sql(statement: str) -> DataFrame:  # every report query reads the one pin taken above
        return serving.query(statement, new_pin=False)

    tables = ctx.settings.tables
    print("\nserving.page_activity (newest windows first):")
    sql(
        "SELECT page, window_start, events, total_duration_ms, max_duration_ms, unique_users "
        "FROM serving.page_activity ORDER BY window_start DESC, events DESC"
    ).show(15, truncate=False)
    share = sql(
        "SELECT (SELECT coalesce(sum(events), 0) FROM batch.page_activity) AS batch_events, "
        "(SELECT coalesce(sum(events), 0) FROM speed.page_activity) AS speed_events, "
        "(SELECT coalesce(sum(events), 0) FROM serving.page_activity) AS serving_events, "
        f"(SELECT count(*) FROM master.{tables.master}) AS master_rows, "
        f"(SELECT count(*) FROM master.{tables.quarantine}) AS quarantined"
    ).first()
    assert share is not None  # scalar subqueries: always one row
    print("events each layer contributed to serving.page_activity:")
    print(f"  batch layer : {share.batch_events:>9}")
    print(f"  speed layer : {share.speed_events:>9}  (ingested after the last batch)")
    print(f"  merged      : {share.serving_events:>9}  (= batch + speed, each event once)")
    print(f"master rows {share.master_rows}, quarantined lines {share.quarantined}:")
    sql(
        f"SELECT regexp_extract(reason, '^[a-z_0-9]+', 0) AS reason, count(*) AS lines "
        f"FROM master.{tables.quarantine} GROUP BY 1 ORDER BY 2 DESC"
    ).show(truncate=False)
    prov = serving.provenance("page_activity")
    lag = "n/a" if prov.freshness_lag_seconds is None else f"{prov.freshness_lag_seconds:.1f}s"
    print(
        f"provenance: batch covers master versions <= {prov.covered_master_version}; speed tags "
        f"{prov.uncovered_tags}; newest ingested at {prov.newest_ingested_at}; "
        f"freshness lag {lag}"
    )
    print(
        f'\nTry: lambda-pipeline query "SELECT * FROM serving.page_activity LIMIT 5" --workdir {ctx.locations.workdir}'
    )


def _report_views(ctx: Context, serving: ServingLayer) -> None:
    """Each merged view of a pipeline without a known truth, then master, the quarantine and each view's provenance."""

    def sql(statement: str) -> DataFrame:  # every report query reads the one pin taken above
        return serving.query(statement, new_pin=False)

    tables = ctx.settings.tables
    for view in ctx.pipeline.views:
        windowed = "window_start" in view.group_columns
        first = [f"`{name}` DESC" for name in list(view.measures)[:1]]
        order = ", ".join(["window_start DESC", *first] if windowed else first)
        print(f"\nserving.{view.name} ({'newest windows first' if windowed else 'all time'}):")
        sql(f"SELECT * FROM serving.{view.name}" + (f" ORDER BY {order}" if order else "")).show(15, truncate=False)
    totals = sql(
        f"SELECT (SELECT count(*) FROM master.{tables.master}) AS master_rows, "
        f"(SELECT count(*) FROM master.{tables.quarantine}) AS quarantined"
    ).first()
    assert totals is not None  # scalar subqueries: always one row
    print(f"master rows {totals.master_rows}, quarantined lines {totals.quarantined}:")
    sql(
        f"SELECT regexp_extract(reason, '^[a-z_0-9]+', 0) AS reason, count(*) AS lines "
        f"FROM master.{tables.quarantine} GROUP BY 1 ORDER BY 2 DESC"
    ).show(truncate=False)
    for view in ctx.pipeline.views:
        prov = serving.provenance(view.name)
        lag = "n/a" if prov.freshness_lag_seconds is None else f"{prov.freshness_lag_seconds:.1f}s"
        print(
            f"provenance of {view.name}: batch covers master versions <= {prov.covered_master_version}; speed tags "
            f"{prov.uncovered_tags}; freshness lag {lag}"
        )
    first_view = ctx.pipeline.views[0].name if ctx.pipeline.views else None
    if first_view:
        print(
            f'\nTry: lambda-pipeline query "SELECT * FROM serving.{first_view} LIMIT 5" '
            f"--workdir {ctx.locations.workdir}{ctx.pipeline_option}"
        )
