"""Query server latency: the merged view against the batch view alone, over HTTP, with 1 and 8 clients; and
the command line's query, cold and through a running server.

Prepares a work directory as ``serving_latency.py`` does (a batch-covered part, then a speed part in several
ingest commits), stops that Spark session, and starts ``lambda-pipeline serve`` over the work directory in
its own process. Clients (``serving_layer.client.Client``, Arrow answers) run in this process:

(a) ``merged``  -- ``SELECT page, sum(events) AS events FROM serving.page_activity GROUP BY page``;
(b) ``batch``   -- the same over ``batch.page_activity``;

each with 1 client (``--queries`` in a row, the cases alternating) and with 8 clients at once (each sending
``--queries`` of one case). Every answer is taken at a fresh pin, as a dashboard's would be. Then, end to
end as a user types them: ``lambda-pipeline query`` through the running server, and ``--local`` (a new JVM).

Run:
    .venv/bin/python bench/server_latency.py --events 200000 --queries 30
Results: a table on stdout and JSON in bench/results/server_latency.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import add_common_args, summary, write_results
from serving_latency import QUERY, open_workdir, prepare

from lambda_pipeline.core.session import get_spark
from lambda_pipeline.pipelines.clickstream import PAGE_ACTIVITY
from lambda_pipeline.serving_layer.client import Client, ServerError

NAME = "server_latency"
START_LIMIT_SECONDS = 180.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="valid events in total (default 200000)")
    parser.add_argument("--batch-share", type=float, default=0.8, help="share covered by the batch (default 0.8)")
    parser.add_argument("--batch-files", type=int, default=4, help="files of the batch-covered part (default 4)")
    parser.add_argument("--speed-files", type=int, default=5, help="files of the speed part (default 5)")
    parser.add_argument("--queries", type=int, default=30, help="timed queries per case and client (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries of each case first (default 5)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the second round (default 8)")
    parser.add_argument("--cli-runs", type=int, default=3, help="runs of each command-line case (default 3)")
    parser.add_argument("--port", type=int, default=18765, help="port of the server (default 18765)")
    parser.add_argument("--seed", type=int, default=11, help="generator seed (default 11)")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.queries < 1 or args.clients < 1 or args.warmup < 0 or args.cli_runs < 0:
        parser.error("--queries and --clients must be >= 1, --warmup and --cli-runs >= 0")
    return args


def start_server(workdir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], Client]:
    """``lambda-pipeline serve`` in its own process; returns once it answers (bounded wait)."""
    command = [sys.executable, "-m", "lambda_pipeline.cli", "serve", "--workdir", str(workdir)]
    command += ["--port", str(args.port), *(a for o in args.override for a in ("--set", o))]
    command += ["--config", args.config] if args.config else []
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    client = Client(f"http://127.0.0.1:{args.port}", timeout=60)
    deadline = time.monotonic() + START_LIMIT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {workdir / 'serve.log'}")
        try:
            client.health()
            return process, client
        except ServerError:
            time.sleep(0.5)  # bounded by the deadline
    process.kill()
    raise RuntimeError(f"the server did not answer within {START_LIMIT_SECONDS:.0f}s")


def timed(client: Client, sql: str) -> float:
    started = time.perf_counter()
    client.query(sql)
    return time.perf_counter() - started


def cli_seconds(workdir: Path, sql: str, args: argparse.Namespace, *, local: bool) -> list[float]:
    command = [sys.executable, "-m", "lambda_pipeline.cli", "query", sql, "--workdir", str(workdir)]
    command += ["--local"] if local else []
    command += [a for o in args.override for a in ("--set", o)] + (["--config", args.config] if args.config else [])
    out = []
    for _ in range(args.cli_runs):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, timeout=600, check=False)
        out.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"query failed: {done.stderr.decode()[-500:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own_workdir, workdir, settings, loc = open_workdir(args, "bench-server-")
    spark = get_spark(settings.spark, app_name=f"bench-{NAME}")
    try:
        print("preparing the work directory:", flush=True)
        prepared = prepare(spark, settings, loc, args)
    finally:
        spark.stop()
    process, client = start_server(workdir, args)
    try:
        view = PAGE_ACTIVITY.name
        sql = {
            case: QUERY.format(view=f"{layer}.{view}") for case, layer in (("merged", "serving"), ("batch", "batch"))
        }
        for _ in range(args.warmup):
            for case in sql:
                client.query(sql[case])
        one: dict[str, list[float]] = {case: [] for case in sql}
        for i in range(args.queries):
            for case in list(sql)[i % 2 :] + list(sql)[: i % 2]:
                one[case].append(timed(client, sql[case]))
        many: dict[str, list[float]] = {}
        for case in sql:
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                runs = pool.map(
                    lambda _, c=case: [timed(Client(client.url), sql[c]) for _ in range(args.queries)],
                    range(args.clients),
                )
                many[case] = [s for run in runs for s in run]
        total = client.query(f"SELECT sum(events) AS n FROM serving.{view}").table.column("n")[0].as_py()
        through_server = cli_seconds(workdir, sql["merged"], args, local=False)
    finally:
        process.terminate()
        process.wait(timeout=60)
    cold = cli_seconds(workdir, sql["merged"], args, local=True)

    stats = {
        "1 client": {case: summary(s, 1000.0) for case, s in one.items()},
        f"{args.clients} clients": {case: summary(s, 1000.0) for case, s in many.items()},
    }
    cli = {"through the server": summary(through_server, 1.0), "cold (--local)": summary(cold, 1.0)}
    print(f"\nQuery server latency over {args.events:,} events, Arrow answers, a fresh pin per query (ms):")
    print(f"{'clients':<12} {'case':<8} {'p50':>8} {'p95':>8} {'max':>8}")
    for clients, cases in stats.items():
        for case, s in cases.items():
            print(f"{clients:<12} {case:<8} {s['p50']:>8.1f} {s['p95']:>8.1f} {s['max']:>8.1f}")
        ratio = cases["merged"]["p50"] / cases["batch"]["p50"]
        print(f"{clients:<12} merged/batch p50 {ratio:.2f}x")
    for what, s in cli.items():
        print(f"lambda-pipeline query, {what}: p50 {s['p50']:.2f} s (runs: {s['n']})")
    print(f"merged total: {total:,} events (expected {args.events:,})")
    write_results(
        args.output,
        NAME,
        {
            "parameters": {k: v for k, v in vars(args).items() if k not in {"output"}},
            "prepared": prepared,
            "latency_ms": stats,
            "cli_seconds": cli,
            "merged_total": total,
            "cpu_count": os.cpu_count(),
        },
    )
    if own_workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if total == args.events else 1


if __name__ == "__main__":
    sys.exit(main())
