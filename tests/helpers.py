"""Expected answers computed independently of the serving layer, straight from master; and a pipeline's
usual state to test against (a published batch, then events only the speed layer holds)."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.batch_layer.recompute import deduplicate
from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.views import TumblingWindow, View, count, max_of
from lambda_pipeline.pipelines.clickstream import CLICKS, CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest


def ingest_once(spark: SparkSession, settings: Settings, locations: Locations) -> None:
    """Ingest what the landing folder holds now, then stop."""
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()


def batch_then_speed(
    spark: SparkSession,
    settings: Settings,
    locations: Locations,
    generator: ClickstreamGenerator,
    *,
    batch: tuple[int, int],
    speed: tuple[int, int],
) -> None:
    """``batch`` = (events, files) ingested and covered by a published batch; then ``speed`` ingested only."""
    generator.write(locations.landing, batch[0], files=batch[1])
    ingest_once(spark, settings, locations)
    run_batch(spark, CLICKSTREAM, locations)
    generator.write(locations.landing, speed[0], files=speed[1])
    ingest_once(spark, settings, locations)


EXACT_MEASURES = ("events", "total_duration_ms", "max_duration_ms")


def recompute(spark: SparkSession, master_path: str, tag_filter: str = "true") -> dict:
    """page_activity over the master events selected by ``tag_filter``, as {(page, window): row}."""
    events = spark.read.format("delta").load(master_path).filter(tag_filter)
    frame = PAGE_ACTIVITY.finalize(PAGE_ACTIVITY.partials(deduplicate(events, CLICKS), by_tag=False))
    return by_key(frame)


def by_key(frame: DataFrame) -> dict:
    return {(r.page, r.window_start): r.asDict() for r in frame.collect()}


def assert_same_view(got: dict, expected: dict, *, users_tolerance: float) -> None:
    assert got.keys() == expected.keys(), (sorted(set(got) ^ set(expected)))[:5]
    for key, row in expected.items():
        for measure in EXACT_MEASURES:
            assert got[key][measure] == row[measure], (key, measure, got[key][measure], row[measure])
        assert abs(got[key]["unique_users"] - row["unique_users"]) <= users_tolerance * max(1, row["unique_users"]), key


def events_at(spark: SparkSession, locations: Locations, view: str, pin: dict) -> int:
    """Independently of the serving layer: the master events a pin (``Pin.as_dict()``) serves for ``view``.

    Those of the covered tags, plus those of the tags the pinned speed version holds above the coverage.
    """
    covered = int(pin["covered_master_version"])
    speed_version = pin["speed_table_versions"].get(view)
    tags: list[int] = []
    if speed_version is not None:
        speed = spark.read.format("delta").option("versionAsOf", speed_version).load(locations.speed_partials(view))
        tags = [r.ingest_tag for r in speed.filter(f"ingest_tag > {covered}").select("ingest_tag").distinct().collect()]
    master_version = int(pin["master_table_version"])
    master = spark.read.format("delta").option("versionAsOf", master_version).load(locations.master)
    tag_list = ",".join(str(t) for t in tags) or "-1"
    assert max([covered, *tags]) <= master_version  # master is read last: it holds every tag served
    return master.filter(f"ingest_tag <= {covered} OR ingest_tag IN ({tag_list})").count()


class LayersAtWork:
    """Ingest and batch committing in a thread while a test reads: ``rounds`` files of ``events`` each, each
    ingested, and a batch after every second one. ``failures`` holds what the thread raised; ``done`` is set
    when it ends."""

    def __init__(
        self, spark: SparkSession, settings: Settings, locations: Locations, generator: ClickstreamGenerator, *,
        events: int = 50, rounds: int = 4,
    ) -> None:  # fmt: skip
        import threading

        self.failures: list[BaseException] = []
        self.done = threading.Event()

        def work() -> None:
            try:
                for round_ in range(rounds):
                    generator.write(locations.landing, events, files=1)
                    ingest_once(spark, settings, locations)
                    if round_ % 2:
                        run_batch(spark, CLICKSTREAM, locations)
            except BaseException as exc:  # reported by the test's thread
                self.failures.append(exc)
            finally:
                self.done.set()

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the end (bounded), then fail the test with what the thread raised, or if it still runs."""
        self.thread.join(timeout=timeout)
        assert not self.failures, self.failures
        assert not self.thread.is_alive(), "the layers did not finish within the deadline"


PAGE_VISITS = View(
    name="page_visits",
    source=CLICKS,
    keys=("page",),
    window=TumblingWindow("event_time", "5 minutes"),
    measures={"visits": count(), "longest_ms": max_of("duration_ms")},
)
"""A second view over the clickstream, for tests of several views."""
