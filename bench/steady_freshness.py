"""Freshness in steady state, as a client sees it: the pipeline through its query server, beside the plain job.

Two phases get the same Kafka load in the same run, one after the other, each in its own processes (local mode,
``local[2]``, local disk), on one broker:

- **pipeline**: ``lambda-pipeline ingest`` and ``lambda-pipeline serve``; a client polls the server every
  ``--poll`` seconds with ``SELECT sum(events) FROM serving.page_activity``;
- **plain**: the Kafka-to-Delta append job a user would write instead (``bench/_plain_job.py``: ``from_json``,
  Delta append, Spark's default trigger, ``snapshotPartitions=2``), and a client (a warm Spark session) that
  counts its table's rows every ``--poll`` seconds.

**Steady state.** Before the load, each topic gets a preload of unique valid events, ``--preload-minutes`` of the
rate (default: the configured ``ingest.dedup_horizon``, 15 minutes, so 9 M events at 10,000/s), drained by the
job before the load starts. The pipeline's dedup then holds every preloaded key: its state is at the full size
the horizon gives at that rate, and none of it expires during the load (each key lives one horizon from when it
was seen). The horizon itself is never shortened. Expiry's own cost (keys leaving at the rate they arrive) is not
in this figure: ``bench/dedup_state.py`` measures the dedup with expiry.

**Freshness** of a burst = the first answer whose total includes it, minus when it was produced (the preload is
subtracted from every total). Over ``--seconds`` after ``--warmup``.

``--load-clients N`` adds N clients of the pipeline's server that send the same query back to back during the load;
freshness is still that of the measured client, which polls every ``--poll`` seconds (``--poll 0 --load-clients 7``:
eight clients back to back).

    python bench/steady_freshness.py --rate 10000 --seconds 300 --warmup 60
    python bench/steady_freshness.py --phases pipeline --poll 0 --load-clients 7

It prints pipeline / plain ratios and writes ``bench/results/steady_freshness.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS_DIR, summary, write_results
from _kafka_load import FastMessages, ProducerProcess, fill_topic
from cluster_s3 import QUERY, Deployment, freshness_of, poll_freshness, write_config

from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.durations import duration_seconds

HERE = Path(__file__).resolve().parent
DRAIN_FLOOR_EVENTS_PER_S = 2_000
"""The slowest drain of the preload the script waits for, before it gives up."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000.0, help="valid events/s (default 10000)")
    parser.add_argument("--seconds", type=float, default=300.0, help="measured seconds (default 300)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of load before measuring (default 60)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between a client's queries (default 1)")
    parser.add_argument(
        "--preload-minutes",
        type=float,
        default=None,
        help="minutes of the rate preloaded before the load (default: the dedup horizon of the config)",
    )
    parser.add_argument("--phases", default="plain,pipeline", help="comma-separated: plain, pipeline")
    parser.add_argument(
        "--load-clients",
        type=int,
        default=0,
        help="more clients of the pipeline's server, each polling back to back during the load (default 0)",
    )
    parser.add_argument("--set", action="append", default=[], dest="override", help="a pipeline config override")
    parser.add_argument(
        "--serve-set", action="append", default=[], metavar="KEY=VALUE", help="a config override of the server only"
    )
    parser.add_argument(
        "--serve-nice",
        type=int,
        default=0,
        help="run the server under nice -n N, and its session's autogroup too (default 0)",
    )
    parser.add_argument("--output", default=str(RESULTS_DIR / "steady_freshness.json"))
    parser.set_defaults(  # what ProducerProcess reads: a clean load, so that a total says which bursts are in
        generator="fast", seed=11, ticks_per_second=4.0, late_fraction=0.0, duplicate_fraction=0.0,
        malformed_fraction=0.0,
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not set(args.phase_list) <= {"plain", "pipeline"} or not args.phase_list:
        parser.error(f"--phases takes plain and/or pipeline, got {args.phases!r}")
    return args


def job_env() -> dict[str, str]:
    """The jobs' environment: this one's, ``PYTHONPATH`` included (an A/B runs a worktree's code through it)."""
    return {k: v for k, v in os.environ.items() if k != "PYSPARK_SUBMIT_ARGS"}


def wait_until(what: str, check: Any, timeout: float, alive: Any) -> float:
    """Poll ``check()`` every second until true (bounded by ``timeout``); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        alive()
        if check():
            return time.monotonic() - started
        time.sleep(1.0)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def preload(kafka: Any, topic: str, events: int, args: argparse.Namespace) -> int:
    started = time.monotonic()
    sent, valid = fill_topic(kafka, topic, events, FastMessages(args.seed, "preload", 0.0, 0.0, 0.0))
    print(f"  preloaded {sent:,} events in {time.monotonic() - started:.0f} s", flush=True)
    return valid


def run_pipeline(folder: Path, broker: Any, args: argparse.Namespace, preload_events: int) -> dict[str, Any]:
    from lambda_pipeline.local_services.process import free_port
    from lambda_pipeline.serving_layer.client import Client

    topic = f"steady-pipeline-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=2)
    kafka = {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "starting_offsets": "earliest"}
    settings = load_settings(None, [f"ingest.kafka.bootstrap_servers={broker.bootstrap_servers}", *args.override])
    base = preload(settings.ingest.kafka, topic, preload_events, args)
    config = write_config(
        folder,
        str(folder / "work"),
        kafka,
        settings.ingest.trigger,
        {"spark": {"master": "local[2]", "shuffle_partitions": 2, "log_level": "WARN"}},
    )
    env = job_env()
    command = [sys.executable, "-m", "lambda_pipeline.cli"]
    # The server runs in a session of its own. Where the kernel groups sessions for the scheduler (autogroup), a
    # process's nice weighs only within its session: the session's own nice (/proc/self/autogroup) is what
    # weighs against ingest's session.
    autogroup = f'echo {args.serve_nice} > /proc/self/autogroup 2>/dev/null; exec nice -n {args.serve_nice} "$@"'
    niced = ["sh", "-c", autogroup, "sh"] if args.serve_nice else []
    dep = Deployment(
        "pipeline", folder, config, lambda job, rest: [*(niced if job == "serve" else []), *command, job, *rest], env
    )
    port = free_port()
    ingest = dep.start("ingest", *(item for o in args.override for item in ("--set", o)))
    serve = dep.start("serve", "--port", str(port), *(item for o in args.serve_set for item in ("--set", o)))
    producer = ProducerProcess(settings.ingest.kafka, topic, args, args.rate, "pipeline")
    client = Client(f"http://127.0.0.1:{port}", timeout=60)

    def alive() -> None:
        for name, job in (("ingest", ingest), ("serve", serve)):
            if job.poll() is not None:
                raise RuntimeError(f"{name} exited ({job.returncode}); see {folder}")

    def drained() -> bool:
        try:
            return int(client.query(QUERY).table.column("n")[0].as_py() or 0) >= base
        except Exception:  # no table yet, or the server is starting
            return False

    try:
        drain_s = wait_until("the preload visible", drained, 600 + base / DRAIN_FLOOR_EVENTS_PER_S, alive)
        print(f"  preload drained and visible after {drain_s:.0f} s; load starts", flush=True)
        load = LoadClients(f"http://127.0.0.1:{port}", args.load_clients)
        produced_at = producer.start()
        try:
            result = poll_freshness(client, producer, produced_at, args, ingest, lambda: None, base=base)
        finally:
            load_result = load.stop()
    finally:
        producer.stop()
        dep.stop(ingest)
        dep.stop(serve)
    result.pop("window", None)
    extra = {"load_clients": load_result} if args.load_clients else {}
    return {**result, **extra, "preload_events": base, "preload_drain_s": drain_s, "dedup_keys_at_start": base}


class LoadClients:
    """``count`` clients that send the measured query back to back until stopped: the load of many users."""

    def __init__(self, url: str, count: int) -> None:
        from lambda_pipeline.serving_layer.client import Client

        self.done, self.query_ms, self.failures = threading.Event(), [], 0
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._poll, args=(Client(url, timeout=60),), daemon=True) for _ in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def _poll(self, client: Any) -> None:
        while not self.done.is_set():
            started = time.time()
            try:
                client.query(QUERY)
                with self._lock:
                    self.query_ms.append((time.time() - started) * 1000)
            except Exception:  # counted; a busy server answers 503
                with self._lock:
                    self.failures += 1
                self.done.wait(0.1)

    def stop(self) -> dict[str, Any]:
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=120)
        return {"clients": len(self.threads), "query_ms": summary(self.query_ms), "failures": self.failures}


def run_plain(folder: Path, broker: Any, args: argparse.Namespace, preload_events: int) -> dict[str, Any]:
    topic = f"steady-plain-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=2)
    settings = load_settings(None, [f"ingest.kafka.bootstrap_servers={broker.bootstrap_servers}"])
    base = preload(settings.ingest.kafka, topic, preload_events, args)
    table, answers = folder / "table", folder / "answers.txt"
    env = job_env()

    def start(*command: str, log: str) -> subprocess.Popen[bytes]:
        with (folder / log).open("wb") as out:
            return subprocess.Popen(
                [sys.executable, str(HERE / "_plain_job.py"), *command],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    job = start(
        "run", "--bootstrap", broker.bootstrap_servers, "--topic", topic, "--table", str(table),
        "--checkpoint", str(folder / "checkpoint"), log="job.log",
    )  # fmt: skip
    client = start("poll", "--table", str(table), "--every", str(args.poll), "--out", str(answers), log="client.log")
    producer = ProducerProcess(settings.ingest.kafka, topic, args, args.rate, "plain")

    def alive() -> None:
        for name, process in (("plain job", job), ("client", client)):
            if process.poll() is not None:
                raise RuntimeError(f"the {name} exited ({process.returncode}); see {folder}")

    def answers_so_far() -> list[tuple[float, int, float]]:
        if not answers.exists():
            return []
        rows = [line.split() for line in answers.read_text().splitlines() if line.strip()]
        return [(float(t), int(n), float(ms)) for t, n, ms in rows]

    try:
        drain_s = wait_until(
            "the preload visible",
            lambda: any(n >= base for _, n, _ in answers_so_far()),
            600 + base / DRAIN_FLOOR_EVENTS_PER_S,
            alive,
        )
        print(f"  preload drained and visible after {drain_s:.0f} s; load starts", flush=True)
        mark = len(answers_so_far())
        produced_at = producer.start()
        deadline = time.monotonic() + args.warmup + args.seconds + 300
        result = None
        while time.monotonic() < deadline:
            alive()
            result = result or producer.poll()
            if result is not None and max(n for _, n, _ in answers_so_far()) - base >= result["events"]:
                break
            time.sleep(1.0)
        if result is None:
            raise RuntimeError("the producer did not finish")
    finally:
        producer.stop()
        for process in (job, client):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
    after = answers_so_far()[mark:]
    seen = [(t, n - base) for t, n, _ in after if n >= 0]
    freshness, missing = freshness_of(seen, result["log"], produced_at + args.warmup)
    return {
        "freshness_s": summary(freshness),
        "bursts_never_seen": missing,
        "query_ms": summary([ms for _, n, ms in after if n >= 0]),
        "events": result["events"],
        "preload_events": base,
        "preload_drain_s": drain_s,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker
    from lambda_pipeline.local_services.process import free_port

    settings = load_settings(None, args.override)
    minutes = args.preload_minutes
    if minutes is None:
        minutes = duration_seconds(settings.ingest.dedup_horizon) / 60
    preload_events = int(args.rate * minutes * 60)
    root = Path(tempfile.mkdtemp(prefix="bench-steady-"))
    broker = KafkaBroker(root / "kafka", port=free_port())
    broker.start()
    results: dict[str, Any] = {}
    try:
        for phase in args.phase_list:
            folder = root / phase
            folder.mkdir()
            print(f"[{phase}] preload {preload_events:,} events ({minutes:g} min at {args.rate:,.0f}/s), then "
                  f"{args.warmup + args.seconds:.0f} s of load; logs in {folder}", flush=True)  # fmt: skip
            run = run_pipeline if phase == "pipeline" else run_plain
            results[phase] = run(folder, broker, args, preload_events)
            fresh, query = results[phase]["freshness_s"], results[phase]["query_ms"]
            print(f"  freshness p50 {fresh['p50']:.2f} s, p99 {fresh['p99']:.2f} s; query p50 {query['p50']:.0f} ms")
            if "load_clients" in results[phase]:
                load = results[phase]["load_clients"]
                back_to_back = load["query_ms"]["p50"]
                print(f"  with {load['clients']} more clients back to back: their query p50 {back_to_back:.0f} ms")
    finally:
        broker.stop(timeout=30)
    ratios = {}
    if {"plain", "pipeline"} <= results.keys():
        for stat in ("p50", "p95", "p99"):
            plain, pipeline = results["plain"]["freshness_s"].get(stat), results["pipeline"]["freshness_s"].get(stat)
            if plain and pipeline:
                ratios[f"freshness_{stat}"] = pipeline / plain
        print("pipeline / plain:", ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    parameters = {**{k: v for k, v in vars(args).items() if k != "phase_list"}, "preload_events": preload_events}
    write_results(args.output, "steady_freshness", {"parameters": parameters, "results": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
