"""``lambda-pipeline s3 start|stop|status``: the project's local S3-compatible server, from the command line.

The server listens where the config says S3 is (``s3.endpoint``, when it is a loopback ``http://`` address),
creates the buckets the ``s3a://`` locations name, and outlives the command that started it, so the jobs
and a later ``s3 stop`` in other terminals all find it. Its log and pid file live under ``--dir``
(default ``~/.cache/lambda-pipeline/s3-server``); the objects live in the server's memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lambda_pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from lambda_pipeline.cli.context import Context
    from lambda_pipeline.local_services.s3_server import S3Server

__all__ = ["add_s3_parser", "local_endpoint_port", "run_s3"]

_LOOPBACK = ("127.0.0.1", "localhost")


def add_s3_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``s3`` verb; the caller adds the common options (--config, --workdir, --set)."""
    s3 = verbs.add_parser(
        "s3",
        help="start, stop or inspect a local S3-compatible server (moto) on 127.0.0.1",
        description="A real S3 endpoint over HTTP for local runs with s3a:// locations (needs the 'local' extra: "
        "pip install -e '.[local]'). Objects live in the server's memory and are lost when it stops.",
    )
    s3.add_argument("action", choices=("start", "stop", "status"))
    s3.add_argument("--port", type=int, help="server port when s3.endpoint is not an http://127.0.0.1:<port> address")
    s3.add_argument("--dir", help="log, pid and state files (default: ~/.cache/lambda-pipeline/s3-server)")
    s3.add_argument(
        "--bucket", action="append", default=[], help="also create this bucket (repeatable; s3a:// locations' are)"
    )
    s3.add_argument(
        "--request-log",
        action="store_true",
        help="start: write one line per request (method, path, query, status) to <dir>/s3-requests.log",
    )
    s3.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for start or stop (default 60)")
    return s3


def local_endpoint_port(endpoint: str | None) -> int | None:
    """The port of an ``http://127.0.0.1:<port>`` (or localhost) endpoint, else None."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return parts.port if parts.scheme == "http" and parts.hostname in _LOOPBACK and parts.port else None


def _server(ctx: Context, args: argparse.Namespace) -> S3Server:
    from lambda_pipeline.core.cache import cache_dir
    from lambda_pipeline.local_services.s3_server import DEFAULT_PORT, S3Server

    base_dir = Path(args.dir) if args.dir else cache_dir() / "s3-server"
    endpoint = ctx.settings.s3.endpoint
    configured = local_endpoint_port(endpoint)
    if configured is not None:
        if args.port is not None and args.port != configured:
            raise ConfigError(
                "--port",
                None,
                f"{args.port} differs from s3.endpoint={endpoint}, where the jobs would look for S3; "
                f"use --set s3.endpoint=http://127.0.0.1:{args.port} instead",
            )
        region = ctx.settings.s3.region or "us-east-1"
        return S3Server(base_dir, port=configured, region=region, request_log=args.request_log)
    if args.port is None and endpoint is not None and args.action == "start":
        raise ConfigError(
            "--port",
            None,
            f"s3.endpoint={endpoint} is not an http://127.0.0.1:<port> server; pass --port to run a local server "
            "anyway, or --set s3.endpoint=http://127.0.0.1:9000",
        )
    return S3Server(base_dir, port=args.port or DEFAULT_PORT, request_log=args.request_log)


def run_s3(ctx: Context, args: argparse.Namespace) -> int:
    """Run one action; exit code 0 on success, and for ``status`` 0 running / 1 not running."""
    server = _server(ctx, args)
    status = server.status()
    if args.action == "status":
        if not status.running:
            print(f"s3: not running (log {status.log_file})")
            return 1
        buckets = ", ".join(server.buckets()) or "none"
        print(f"s3: running on {status.endpoint}, pid {status.pid}, buckets: {buckets}; log {status.log_file}")
        return 0
    if args.action == "stop":
        if not status.running:
            print(f"s3: not running ({server.base_dir})")
            return 0
        clean = server.stop(timeout=args.timeout)
        how = "cleanly" if clean else f"after a kill: it did not stop within {args.timeout:.0f}s"
        print(f"s3: stopped pid {status.pid} {how}; its buckets and objects are gone")
        return 0
    server.start(timeout=args.timeout)
    made = []
    for bucket in dict.fromkeys([*ctx.locations.s3a_buckets(), *args.bucket]):
        made.append(f"{bucket} ({'created' if server.create_bucket(bucket) else 'exists'})")
    state = "already running" if status.running else "listening"
    print(f"s3: {state} on {server.endpoint}, pid {server.status().pid}; buckets: {', '.join(made) or 'none'}")
    if args.request_log and not status.running:
        print(f"s3: one line per request in {server.request_log_file}")
    if local_endpoint_port(ctx.settings.s3.endpoint) is None:
        print(
            f"s3: point the jobs at it with --set s3.endpoint={server.endpoint} --set s3.path_style_access=true "
            "(or use conf/s3-local.yaml)"
        )
    return 0
