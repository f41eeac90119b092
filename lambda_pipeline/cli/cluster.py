"""``lambda-pipeline cluster start|stop|status``: a Spark standalone cluster on 127.0.0.1, from the command line.

One master and one worker from pyspark's own ``spark-class`` (``local_services/spark_cluster.py``), outliving
the command that started them, so that jobs submitted from other terminals (``spark-submit --master
spark://127.0.0.1:7077``, or any verb with ``--set spark.master=spark://127.0.0.1:7077``) and a later ``cluster
stop`` find them. Executors inherit the worker's environment: export the AWS variables before ``start`` when
the jobs read ``s3a://`` locations with credentials from the environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lambda_pipeline.local_services.spark_cluster import LocalCluster

__all__ = ["add_cluster_parser", "run_cluster"]


def add_cluster_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``cluster`` verb (no config: the cluster serves any work directory)."""
    from lambda_pipeline.local_services.spark_cluster import DEFAULT_PORT, DEFAULT_UI_PORT

    cluster = verbs.add_parser(
        "cluster",
        help="start, stop or inspect a local Spark standalone cluster (one master, one worker) on 127.0.0.1",
        description="Executors in their own JVMs, drivers in spark-submit: the jobs run as on a real cluster. "
        "The worker takes the two ports after the master's.",
    )
    cluster.add_argument("action", choices=("start", "stop", "status"))
    cluster.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"master port (default {DEFAULT_PORT})")
    cluster.add_argument(
        "--ui-port", type=int, default=DEFAULT_UI_PORT, help=f"master web UI port (default {DEFAULT_UI_PORT})"
    )
    cluster.add_argument(
        "--cores", type=int, default=4, help="cores the worker offers; each job takes spark.cores.max (default 4)"
    )
    cluster.add_argument("--memory", default="6g", help="memory the worker offers its executors (default 6g)")
    cluster.add_argument("--dir", help="logs, pid and state files (default: ~/.cache/lambda-pipeline/spark-cluster)")
    cluster.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for start or stop (default 90)")
    return cluster


def _cluster(args: argparse.Namespace) -> LocalCluster:
    from lambda_pipeline.core.cache import cache_dir
    from lambda_pipeline.core.errors import ConfigError
    from lambda_pipeline.local_services.spark_cluster import LocalCluster

    if args.cores < 1:
        raise ConfigError("--cores", None, f"{args.cores}: the worker needs at least one core to offer")
    base_dir = Path(args.dir) if args.dir else cache_dir() / "spark-cluster"
    return LocalCluster(base_dir, args.port, args.ui_port, cores=args.cores, memory=args.memory)


def run_cluster(args: argparse.Namespace) -> int:
    """Run one action; exit code 0 on success, and for ``status`` 0 running / 1 not running."""
    cluster = _cluster(args)
    status = cluster.status()
    if args.action == "status":
        if not status.running:
            print(f"cluster: not running ({cluster.base_dir})")
            return 1
        apps = ", ".join(status.applications) or "none"
        print(
            f"cluster: {status.master_url}, web UI {status.ui_url}; master pid {status.master_pid}, worker pid "
            f"{status.worker_pid}; cores {status.cores_used}/{status.cores} in use; applications: {apps}"
        )
        return 0
    if args.action == "stop":
        if status.master_pid is None and status.worker_pid is None:
            print(f"cluster: not running ({cluster.base_dir})")
            return 0
        clean = cluster.stop(timeout=args.timeout)
        print(f"cluster: stopped{'' if clean else ' (killed: it did not stop in time)'}")
        return 0
    cluster.start(timeout=args.timeout)
    print(
        f"cluster: {'already running' if status.running else 'started'} at {cluster.master_url} "
        f"(web UI http://127.0.0.1:{args.ui_port}, {args.cores} cores, {args.memory}); submit with "
        f"--master {cluster.master_url}, or give any verb --set spark.master={cluster.master_url}"
    )
    return 0
