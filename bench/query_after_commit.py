"""What one server query costs right after an ingest commit: the log-following speed read against Delta's reader.

A work directory gets a published batch, then ingest commits one micro-batch at a time (file source). After each
commit, two server query services over the same directory, in the same JVM, answer the statement a polling
client sends (``SELECT sum(events) FROM serving.page_activity``) at a new pin, then once more at the same pin:

- **files**: the server as it runs (``serving_layer/speed_files.py``, ``speed_frames.py``): the new tag's file
  read, the provenance from the log's statistics;
- **delta** (the baseline): the same server with the speed table read through Delta at each new version and the
  provenance computed by two Spark jobs, as before the log-following reader.

The two take turns after every commit (which goes first alternates), so both see the same tables and the same
warm JVM. For each it records the time of the pin and planning, of the run (Arrow), of the provenance, and the
Spark jobs each part started (the jobs of the UI's REST API, by submission time).

    .venv/bin/python bench/query_after_commit.py --commits 24

It prints the medians and the files / delta ratio, and writes ``bench/results/query_after_commit.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_common_args, environment, work_directory, write_results

NAME = "query_after_commit"
QUERY = "SELECT sum(events) FROM serving.page_activity"
PARTS = ("plan", "run", "provenance")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=24, help="ingest commits, each followed by the queries (24)")
    parser.add_argument("--skip", type=int, default=3, help="first commits left out of the medians (3)")
    parser.add_argument("--events", type=int, default=5_000, help="events per commit (5000)")
    parser.add_argument("--published", type=int, default=200_000, help="events the batch covers first (200000)")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.commits <= args.skip or args.skip < 0:
        parser.error("--commits must exceed --skip >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lambda_pipeline.batch_layer.job import run_batch
    from lambda_pipeline.core.config_loader import load_settings
    from lambda_pipeline.core.locations import Locations
    from lambda_pipeline.core.session import get_spark
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
    from lambda_pipeline.pipelines.generator import ClickstreamGenerator
    from lambda_pipeline.pipelines.ingest import start_ingest
    from lambda_pipeline.serving_layer.server import QueryService, frame_to_arrow

    settings = load_settings(args.config, ["speed.compact_every=1000", *args.override])
    spark = get_spark(settings.spark, app_name=NAME)
    with work_directory(args, "lp-query-after-commit-") as workdir:
        locations = Locations.create(settings, workdir / "work")
        locations.ensure_local_dirs()
        generator = ClickstreamGenerator(5)

        def ingest(events: int, files: int) -> None:
            generator.write(locations.landing, events, files=files)
            start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()

        ingest(args.published, 4)
        run_batch(spark, CLICKSTREAM, locations)
        services = {
            "files": QueryService(spark, CLICKSTREAM, locations, settings.serve),
            "delta": QueryService(spark, CLICKSTREAM, locations, settings.serve),
        }
        delta_relations = services["delta"].serving.relations
        delta_relations.speed_files = lambda view, pin: None  # type: ignore[method-assign]  # Delta's reader

        marks: list[tuple[str, str, int, float, float, float, float]] = []

        def one(name: str, when: str, commit: int) -> None:
            service = services[name]
            t0 = time.time()
            with service._planning:
                answer = service.serving.answer(QUERY)
            t1 = time.time()
            frame_to_arrow(answer.frame, 100)
            t2 = time.time()
            [p.as_dict() for p in service.serving.provenances(answer)]
            marks.append((name, when, commit, t0, t1, t2, time.time()))

        for commit in range(args.commits):
            ingest(args.events, 1)
            order = ("files", "delta") if commit % 2 == 0 else ("delta", "files")
            for name in order:
                one(name, "after_commit", commit)
                one(name, "same_pin", commit)
        jobs = _jobs(spark)
        results = _medians(marks, jobs, args.skip)
        for when in ("after_commit", "same_pin"):
            files, delta = results["files"][when], results["delta"][when]
            ratio = files["total_ms"] / delta["total_ms"] if delta["total_ms"] else float("nan")
            print(f"{when}: files {_line(files)}")
            print(f"{' ' * len(when)}  delta {_line(delta)}   files / delta (total) = {ratio:.2f}x")
        write_results(
            args.output,
            NAME,
            {
                "commits": args.commits,
                "skip": args.skip,
                "results": results,
                "environment": environment(spark, settings),
            },
        )
    spark.stop()
    return 0


def _jobs(spark: Any) -> list[tuple[float, str]]:
    """(submission time, name) of every job of this application, from Spark's UI REST API."""
    context = spark.sparkContext
    url = f"{context.uiWebUrl}/api/v1/applications/{context.applicationId}/jobs"
    with urllib.request.urlopen(url, timeout=30) as response:
        listed = json.load(response)
    out = []
    for job in listed:
        stamp = datetime.strptime(job["submissionTime"].replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
        out.append((stamp.timestamp(), job.get("name", "")))
    return out


def _medians(marks: list[Any], jobs: list[tuple[float, str]], skip: int) -> dict[str, dict[str, dict[str, float]]]:
    by: dict[tuple[str, str], dict[str, list[float]]] = {}
    for name, when, commit, t0, t1, t2, t3 in marks:
        if commit < skip:
            continue
        row = by.setdefault((name, when), {})
        for part, start, end in zip(PARTS, (t0, t1, t2), (t1, t2, t3), strict=True):
            row.setdefault(f"{part}_ms", []).append((end - start) * 1000)
            started = sum(1 for stamp, _ in jobs if start - 0.005 <= stamp <= end + 0.005)
            row.setdefault(f"{part}_jobs", []).append(started)
        row.setdefault("total_ms", []).append((t3 - t0) * 1000)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (name, when), row in by.items():
        out.setdefault(name, {})[when] = {key: round(statistics.median(values), 1) for key, values in row.items()}
    return out


def _line(row: dict[str, float]) -> str:
    parts = ", ".join(f"{part} {row[f'{part}_ms']:.0f} ms ({row[f'{part}_jobs']:.0f} jobs)" for part in PARTS)
    return f"total {row['total_ms']:.0f} ms: {parts}"


if __name__ == "__main__":
    raise SystemExit(main())
