"""Hundreds of SIGKILLs: the crash check of tests/test_kafka_crash.py at a scale CI cannot afford.

Starts the project's Kafka broker on a free loopback port, then runs ``tests.crash_check.crash_run``
in rounds of ``--kills-per-round`` kills (each round a fresh topic and work directory, so a failure
points at a small history), until ``--kills`` kills in all. Every round must be exact: produced =
master + quarantine, no event id twice, every generated id present, serving = full recompute before
and after a batch. Results: a line per round and JSON in bench/results/crash_loop.json.

Run:
    .venv/bin/python bench/crash_loop.py --kills 200 --kills-per-round 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import environment, write_results

from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE
from lambda_pipeline.core.session import get_spark
from lambda_pipeline.local_services.kafka_broker import KafkaBroker
from lambda_pipeline.local_services.process import free_port
from tests.crash_check import crash_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs in all (default 200)")
    parser.add_argument("--kills-per-round", type=int, default=50)
    parser.add_argument("--on-commit", type=float, default=0.3, help="share of kills right after a data commit")
    parser.add_argument("--per-second", type=int, default=150, help="valid events produced per second")
    args = parser.parse_args(argv)

    settings = load_settings(None, ["spark.log_level=ERROR", "spark.conf.spark.ui.enabled=false"])
    spark = get_spark(settings.spark, packages=(KAFKA_COORDINATE,))
    rounds = []
    with tempfile.TemporaryDirectory(prefix="crash-loop-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka", port=free_port())
        broker.start()
        try:
            done, n = 0, 0
            while done < args.kills:
                n += 1
                kills = min(args.kills_per_round, args.kills - done)
                topic = f"crash-{n}-{uuid.uuid4().hex[:6]}"
                broker.create_topic(topic, partitions=2)
                t0 = time.perf_counter()
                run = crash_run(
                    spark,
                    broker.bootstrap_servers,
                    topic,
                    Path(tmp) / f"round-{n}",
                    kills,
                    on_commit=args.on_commit,
                    per_second=args.per_second,
                    seed=n,
                    deadline_seconds=3600,
                )
                summary = {"round": n, **run.summary(), "wall_seconds": round(time.perf_counter() - t0, 1)}
                rounds.append(summary)
                print(summary, flush=True)
                done += run.report.total
                if not run.exact:
                    break
        finally:
            broker.stop()
    total = sum(r["kills"] for r in rounds)
    exact = all(r["exact"] for r in rounds)
    print(f"\n{total} SIGKILLs over {len(rounds)} rounds; every round exact: {exact}")
    write_results(
        str(Path(__file__).parent / "results" / "crash_loop.json"),
        "crash_loop",
        {"environment": environment(spark, settings), "rounds": rounds, "kills": total, "exact": exact},
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
