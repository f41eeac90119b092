"""Soak: the whole pipeline for a long run, sampled every minute: does anything grow without bound?

Every job runs as the user runs it, each in its own process with the command line: the project's Kafka broker
on 127.0.0.1, ``generate --to kafka`` at ``--rate`` events/s, ``ingest``, ``batch --every``,
``maintain --every`` and ``serve``. This process starts no Spark. Every ``--sample`` seconds it records:

- resident memory of each job (the Python process and its JVM, summed);
- per table: live files (in its newest version, read from its ``_delta_log``), data files and bytes on disk,
  ``_delta_log`` files and bytes; the ingest checkpoint's files and bytes;
- the merged query's p50 over ``--queries`` queries through the server, and its freshness lag (provenance).

At the end it prints the series, each one's slope after ``--settle`` minutes (per hour), writes JSON and a PNG
(altair, rendered by vl-convert) under ``bench/results/``.

Run (the issue's hour):
    .venv/bin/python bench/soak.py --minutes 60 --rate 5000
The CI version (tests/test_soak.py): ``--minutes 3 --rate 300 --batch-every '1 minute' --maintain-every '1 minute'``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_common_args, write_results

from lambda_pipeline.local_services.process import free_port
from lambda_pipeline.serving_layer.client import Client, ServerError

NAME = "soak"
QUERY = "SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity"
JOBS = ("generator", "ingest", "batch", "maintain", "serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the run (default 60)")
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s produced (default 5000)")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--settle", type=float, default=10.0, help="minutes left out of the slopes (default 10)")
    parser.add_argument(
        "--tail", type=float, default=20.0, help="minutes at the end with their own slopes too (default 20)"
    )
    parser.add_argument("--batch-every", default="5 minutes", help="batch interval (default 5 minutes)")
    parser.add_argument("--maintain-every", default="10 minutes", help="maintenance interval (default 10 minutes)")
    parser.add_argument("--compact-min-files", type=int, default=16, help="maintenance.compact_min_files")
    parser.add_argument("--queries", type=int, default=5, help="merged queries per sample (default 5)")
    parser.add_argument("--plot", default=None, help="PNG path (default bench/results/soak.png)")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample <= 0 or args.queries < 1:
        parser.error("--minutes, --rate and --sample must be positive, --queries at least 1")
    return args


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (the CLI's Python and its JVM), from /proc."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return total


def _files(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``."""
    count = size = 0
    for path in root.rglob("*") if root.exists() else ():
        if path.is_file():
            count += 1
            size += path.stat().st_size
    return count, size


def _live_files(table: Path) -> int:
    """Files in the table's newest version: adds minus removes over its log (JSON commits since the last
    checkpoint, and the checkpoint itself through pyarrow)."""
    log = table / "_delta_log"
    if not log.exists():
        return 0
    live: set[str] = set()
    start = -1
    last = log / "_last_checkpoint"
    if last.exists():
        import pyarrow.parquet as pq

        start = int(json.loads(last.read_text())["version"])
        for part in log.glob(f"{start:020d}.checkpoint*.parquet"):
            adds = pq.read_table(part, columns=["add"]).column("add").to_pylist()
            live |= {a["path"] for a in adds if a}
    for commit in sorted(log.glob("*.json")):
        if int(commit.stem) <= start:
            continue
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live.add(action["add"]["path"])
            elif "remove" in action:
                live.discard(action["remove"]["path"])
    return len(live)


def _tables(warehouse: Path) -> dict[str, Path]:
    found = {}
    for log in sorted(warehouse.rglob("_delta_log")):
        table = log.parent
        found[table.relative_to(warehouse).as_posix()] = table
    return found


def sample(
    workdir: Path, processes: dict[str, subprocess.Popen[bytes]], client: Client, queries: int
) -> dict[str, Any]:
    """One row of every series."""
    row: dict[str, Any] = {"at": time.time()}
    row["rss_mb"] = {name: round(_tree_rss(p.pid) / 2**20, 1) for name, p in processes.items()}
    tables = {}
    for name, table in _tables(workdir / "warehouse").items():
        data_files, data_bytes = _files(table)
        log_files, log_bytes = _files(table / "_delta_log")
        tables[name] = {
            "live_files": _live_files(table),
            "disk_files": data_files - log_files,
            "disk_mb": round((data_bytes - log_bytes) / 2**20, 2),
            "log_files": log_files,
            "log_mb": round(log_bytes / 2**20, 2),
        }
    row["tables"] = tables
    checkpoint_files, checkpoint_bytes = _files(workdir / "checkpoints")
    row["checkpoint"] = {"files": checkpoint_files, "mb": round(checkpoint_bytes / 2**20, 2)}
    latencies, lags = [], []
    for _ in range(queries):
        started = time.perf_counter()
        try:
            answer = client.query(QUERY)
        except (ServerError, OSError) as exc:
            row.setdefault("query_errors", []).append(str(exc)[:200])
            continue
        latencies.append((time.perf_counter() - started) * 1000)
        lag = answer.provenance[0].get("freshness_lag_seconds") if answer.provenance else None
        if lag is not None:
            lags.append(float(lag))
        row["events"] = answer.table.column("n")[0].as_py()
    row["query_p50_ms"] = round(statistics.median(latencies), 1) if latencies else None
    row["freshness_p50_s"] = round(statistics.median(lags), 2) if lags else None
    return row


def series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each measured quantity as (minutes since start, value) points."""
    start = rows[0]["at"]
    out: dict[str, list[tuple[float, float]]] = {}

    def add(name: str, minute: float, value: float | None) -> None:
        if value is not None:
            out.setdefault(name, []).append((minute, float(value)))

    for row in rows:
        minute = (row["at"] - start) / 60
        for job, mb in row["rss_mb"].items():
            add(f"rss_mb.{job}", minute, mb)
        for table, figures in row["tables"].items():
            for key in ("live_files", "disk_files", "disk_mb", "log_files", "log_mb"):
                add(f"{table}.{key}", minute, figures[key])
        add("checkpoint.files", minute, row["checkpoint"]["files"])
        add("checkpoint.mb", minute, row["checkpoint"]["mb"])
        add("query_p50_ms", minute, row["query_p50_ms"])
        add("freshness_p50_s", minute, row["freshness_p50_s"])
    return out


def slopes(points: dict[str, list[tuple[float, float]]], settle: float) -> dict[str, float | None]:
    """Least-squares slope per hour of each series after ``settle`` minutes (None with fewer than 3 points)."""
    out: dict[str, float | None] = {}
    for name, values in points.items():
        kept = [(m, v) for m, v in values if m >= settle]
        if len(kept) < 3 or len({m for m, _ in kept}) < 2:
            out[name] = None
            continue
        fit = statistics.linear_regression([m for m, _ in kept], [v for _, v in kept])
        out[name] = round(fit.slope * 60, 3)
    return out


def plot(points: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """One small chart per group of series (memory, files, sizes, latency), as a PNG."""
    import altair as alt
    import pandas as pd

    groups = {
        "resident memory (MB)": lambda n: n.startswith("rss_mb."),
        "live files per table": lambda n: n.endswith(".live_files"),
        "data files on disk": lambda n: n.endswith(".disk_files"),
        "_delta_log files": lambda n: n.endswith(".log_files"),
        "checkpoint files": lambda n: n == "checkpoint.files",
        "merged query p50 (ms)": lambda n: n == "query_p50_ms",
        "freshness p50 (s)": lambda n: n == "freshness_p50_s",
    }
    charts = []
    for title, wanted in groups.items():
        frame = pd.DataFrame(
            [(name, m, v) for name, values in points.items() if wanted(name) for m, v in values],
            columns=["series", "minute", "value"],
        )
        if frame.empty:
            continue
        charts.append(
            alt.Chart(frame, title=title, width=420, height=160)
            .mark_line(point=True)
            .encode(x="minute:Q", y="value:Q", color="series:N")
        )
    alt.vconcat(*charts).resolve_scale(color="independent").save(str(path), scale_factor=1.0)


def _start(name: str, command: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("wb")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)  # between micro-batches, as on Ctrl-C
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-")) if own else Path(args.workdir)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kafka_port, serve_port = free_port(), free_port()
    overrides = [
        "ingest.source=kafka",
        f"ingest.kafka.bootstrap_servers=127.0.0.1:{kafka_port}",
        "ingest.trigger=1 second",
        f"batch.interval={args.batch_every}",
        f"maintenance.interval={args.maintain_every}",
        f"maintenance.compact_min_files={args.compact_min_files}",
        *args.override,
    ]
    cli = [sys.executable, "-m", "lambda_pipeline.cli"]
    common = ["--workdir", str(workdir), *[a for o in overrides for a in ("--set", o)]]
    common += ["--config", args.config] if args.config else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDA_PIPELINE_")}
    print(f"work directory: {workdir}", flush=True)
    subprocess.run([*cli, "kafka", "start", *common], env=env, check=True, timeout=300)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    rows: list[dict[str, Any]] = []
    stopped: dict[str, float] = {}
    try:
        subprocess.run([*cli, "kafka", "create-topic", *common], env=env, check=True, timeout=300)
        seconds = args.minutes * 60
        commands = {
            "ingest": ["ingest"],
            "generator": ["generate", "--to", "kafka", "--rate", str(args.rate), "--seconds", str(seconds + 120)],
            "batch": ["batch", "--every"],
            "maintain": ["maintain", "--every"],
            "serve": ["serve", "--port", str(serve_port)],
        }
        for name in JOBS:
            processes[name] = _start(name, [*cli, *commands[name], *common], env, logs)
        client = Client(f"http://127.0.0.1:{serve_port}")
        deadline = time.monotonic() + 600
        while True:  # the server answers once ingest created master and its session is warm
            try:
                client.query(QUERY)
                break
            except (ServerError, OSError):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes.values()):
                    raise RuntimeError(f"the pipeline did not start; see {logs}") from None
                time.sleep(2)  # polling the server's first answer, bounded by the deadline
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            rows.append(sample(workdir, processes, client, args.queries))
            last = rows[-1]
            print(
                f"[{(time.monotonic() - started) / 60:5.1f} min] events {last.get('events')}, "
                f"query p50 {last['query_p50_ms']} ms, freshness p50 {last['freshness_p50_s']} s, "
                f"rss {sum(last['rss_mb'].values()):.0f} MB, "
                f"master live files {last['tables'].get('master/master_events', {}).get('live_files')}",
                flush=True,
            )
            dead = [name for name, p in processes.items() if p.poll() is not None and name != "generator"]
            if dead:  # the run ends here; what was sampled is still reported
                stopped = {name: round((time.monotonic() - started) / 60, 1) for name in dead}
                print(f"{', '.join(dead)} stopped during the soak; see {logs}", flush=True)
                break
            time.sleep(max(0.0, args.sample - (time.monotonic() - started) % args.sample))  # the sampling clock
    finally:
        for name in reversed(JOBS):
            if name in processes:
                _stop(processes[name])
        subprocess.run([*cli, "kafka", "stop", *common], env=env, check=False, timeout=300)
    points = series(rows)
    fitted = slopes(points, args.settle)
    # Retention-bound series (files on disk, log files) can only level off once the retention has passed.
    end = max((m for values in points.values() for m, _ in values), default=0.0)
    tail = slopes(points, max(args.settle, end - args.tail))
    print(f"\nSlopes per hour: after the first {args.settle:g} minutes, and over the last {args.tail:g}:")
    for name, slope in sorted(fitted.items()):
        last_value, late = points[name][-1][1], tail.get(name)
        print(
            f"  {name:<48} last {last_value:>10g}   slope {slope if slope is not None else '-':>10}/h"
            f"   last {args.tail:g} min {late if late is not None else '-':>10}/h"
        )
    png = Path(args.plot) if args.plot else Path(args.output).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(points, png)
    print(f"plot written to {png}")
    write_results(
        args.output,
        NAME,
        {
            "parameters": {k: v for k, v in vars(args).items() if k != "output"},
            "stopped": stopped,
            "samples": rows,
            "slopes_per_hour": fitted,
            "slopes_last_per_hour": tail,
            "plot": str(png),
        },
    )
    if stopped:
        print(f"work directory kept for the logs of the jobs that stopped: {workdir}")
    elif own and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
