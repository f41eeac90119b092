"""The warm query server: one Spark session, read-only SQL over HTTP, every answer at one pin.

A query from the command line pays a JVM start (about 30 s on 2 cores). ``lambda-pipeline serve`` keeps one
warm session and answers over HTTP (JSON, CSV or Arrow IPC) with the pin and the provenance of each answer.
Every statement goes through :meth:`ServingLayer.answer`, the same guard as every other way in; pins are
taken per query from the Delta logs (a look at each table's newest commit, no Spark job).

Bounds: ``serve.max_concurrent`` queries run at once and the next ones wait ``serve.queue_wait`` for a slot
(then 503); an answer holds ``serve.max_rows`` rows at most and says when it was cut; a query running longer
than ``serve.query_timeout`` has its Spark jobs cancelled (504) and the server goes on. Loopback needs no
credentials; any other bind address requires a token, read from the environment variable ``serve.token_env``.
"""

from __future__ import annotations

import base64
import csv
import hmac
import io
import ipaddress
import json
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.clock import session_time
from lambda_pipeline.core.config import ServeSettings
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.locations import Locations, local_path
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.client import ANSWER_HEADER, ARROW_STREAM, RemoteAnswer

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "QueryServer",
    "QueryService",
    "check_bind",
    "server_file",
]

MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "arrow": ARROW_STREAM}
SERVER_FILE = ".lambda-pipeline-serve.json"
DASHBOARD_CACHE_SECONDS = 1.0
DASHBOARD_REFRESH_MS = 2000


class Refused(LambdaError):
    """The request cannot be answered as asked (HTTP ``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def frame_to_arrow(frame: DataFrame, limit: int) -> tuple[pa.Table, bool]:
    """At most ``limit`` rows of ``frame`` as Arrow, and whether there were more."""
    table = frame.limit(limit + 1).toArrow()
    return (table.slice(0, limit), True) if table.num_rows > limit else (table, False)


@dataclass
class QueryService:
    """What the HTTP routes call: guard, pin and run one statement within the server's bounds. Thread-safe."""

    spark: SparkSession
    pipeline: Pipeline
    locations: Locations
    settings: ServeSettings
    serving: ServingLayer = field(init=False)

    def __post_init__(self) -> None:
        self.serving = ServingLayer(self.spark, self.pipeline, self.locations, cache_layers=True)
        # The serving layer caches relations per pin: planning takes turns, running does not.
        self._planning = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.settings.max_concurrent)
        # The dashboard reads through a serving layer of its own (its own cache), one update of its data at a time;
        # it reads each view's states several times per update (rows, shares, totals), so it keeps the newest
        # pin's layers too. Its cache holds one drawing per view shown.
        self._dashboard_serving = ServingLayer(self.spark, self.pipeline, self.locations, cache_layers=True)
        self._dashboard_lock = threading.Lock()
        self._dashboard_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def answer(self, sql: str, *, as_of: str | None = None, max_rows: int | None = None) -> RemoteAnswer:
        limit = min(max_rows or self.settings.max_rows, self.settings.max_rows)
        if not self._slots.acquire(timeout=duration_seconds(self.settings.queue_wait)):
            raise Refused(
                503,
                f"the server is busy: {self.settings.max_concurrent} queries are running and none finished within "
                f"{self.settings.queue_wait}; retry later, or raise serve.max_concurrent",
            )
        try:
            started = time.perf_counter()
            with self._planning:
                answer = self.serving.answer(sql, as_of=as_of)
            with self._time_limit(sql):
                table, truncated = frame_to_arrow(answer.frame, limit)
                provenance = [p.as_dict() for p in self.serving.provenances(answer)]
            return RemoteAnswer(
                table,
                truncated,
                answer.pin.as_dict(),
                provenance,
                (time.perf_counter() - started) * 1000,
            )
        finally:
            self._slots.release()

    def _time_limit(self, sql: str) -> _TimeLimit:
        return _TimeLimit(self.spark, sql, duration_seconds(self.settings.query_timeout), self.settings.query_timeout)

    def dashboard(self, view: str | None = None) -> dict[str, Any]:
        """The dashboard's data and drawing of ``view`` (the first view by default), recomputed at most once per
        second per view whatever the number of pages."""
        from lambda_pipeline.serving_layer.dashboard import dashboard_data, drawing

        name = self.pipeline.view(view).name if view else self.pipeline.views[0].name
        with self._dashboard_lock:
            cached_at, cached = self._dashboard_cache.get(name, (0.0, None))
            if cached is None or time.monotonic() - cached_at > DASHBOARD_CACHE_SECONDS:
                data = dashboard_data(self._dashboard_serving, name)
                cached = {"data": data, **drawing(data)}
                self._dashboard_cache[name] = (time.monotonic(), cached)
            return cached

    def health(self) -> dict[str, Any]:
        """Up, over which work directory, and the newest pin (null, with the reason, before any ingest)."""
        try:
            with self._planning:
                pin: dict[str, Any] | None = self.serving.take_pin().as_dict()
            note = None
        except LambdaError as exc:
            pin, note = None, str(exc)
        return {
            "status": "ok",
            "pipeline": self.pipeline.name,
            "workdir": self.locations.workdir,
            "views": [view.name for view in self.pipeline.views],
            "pin": pin,
            "note": note,
        }


class _TimeLimit:
    """Cancels the Spark jobs this thread starts once ``seconds`` have passed (a job group per query)."""

    def __init__(self, spark: SparkSession, sql: str, seconds: float, text: str) -> None:
        self.context, self.sql, self.seconds, self.text = spark.sparkContext, sql, seconds, text
        self.group = f"lambda-pipeline-serve-{uuid.uuid4().hex}"
        self.fired = threading.Event()
        self.timer = threading.Timer(seconds, self._cancel)
        self.timer.daemon = True

    def _cancel(self) -> None:
        self.fired.set()
        self.context.cancelJobGroup(self.group)

    def __enter__(self) -> _TimeLimit:
        self.context.setJobGroup(self.group, self.sql[:200], interruptOnCancel=True)
        self.timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.timer.cancel()
        self.context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        if exc is not None and self.fired.is_set():
            raise Refused(
                504, f"the query ran longer than serve.query_timeout ({self.text}) and was cancelled"
            ) from None


# ---- HTTP -----------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):  # collect() gives this machine's local time: the session's UTC, as 'query'
        return session_time(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _body(answer: RemoteAnswer, fmt: str) -> bytes:
    if fmt == "arrow":
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, answer.table.schema) as writer:
            writer.write_table(answer.table)
        return bytes(sink.getvalue().to_pybytes())
    rows = answer.table.to_pylist()
    columns = answer.table.column_names
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([["" if row[c] is None else row[c] for c in columns] for row in rows])
        return out.getvalue().encode("utf-8")
    document = {"columns": columns, "rows": [[row[c] for c in columns] for row in rows], **answer.meta()}
    return json.dumps(document, default=_json_value).encode("utf-8")


def _format(request: Request, asked: str | None) -> str:
    if asked:
        if asked not in MEDIA_TYPES:
            raise Refused(400, f"format '{asked}' is not one of: {', '.join(MEDIA_TYPES)}")
        return asked
    accept = request.headers.get("accept", "")
    if ARROW_STREAM in accept:
        return "arrow"
    return "csv" if "text/csv" in accept else "json"


async def _query_params(request: Request) -> dict[str, str]:
    params = dict(request.query_params)
    if request.method == "POST":
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise Refused(400, "the request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise Refused(400, 'the request body must be a JSON object such as {"sql": "SELECT ..."}')
            params.update({k: str(v) for k, v in body.items() if v is not None})
        else:
            params.setdefault("sql", (await request.body()).decode("utf-8"))
    return params


def create_app(service: QueryService, *, token: str | None) -> Starlette:
    """The HTTP routes: ``/health``, ``/query`` (GET with ``?sql=``, or POST with JSON or the statement)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if "token" in request.query_params:  # a browser opening the dashboard cannot send a header
            given = f"Bearer {request.query_params['token']}"
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Refused(401, "missing or wrong token: send 'Authorization: Bearer <token>' (or ?token= for the page)")

    def failure(exc: Exception) -> Response:
        if isinstance(exc, Refused):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        if isinstance(exc, LambdaError):  # the guard, a missing table, an unknown publication
            # exit_code: what 'lambda-pipeline query' exits with when it answers in its own process.
            return JSONResponse({"error": str(exc), "exit_code": exc.exit_code}, status_code=400)
        from pyspark.errors import PySparkException

        if isinstance(exc, PySparkException):  # an unknown column, a type error: the statement's fault
            first = str(exc).strip().splitlines()[0]
            return JSONResponse({"error": f"Spark refused the statement: {first}"}, status_code=400)
        raise exc

    def json_route(compute: Callable[..., dict[str, Any]], *params: str) -> Callable[[Request], Awaitable[Response]]:
        """A GET route answering ``compute(*params)`` as JSON (computed off the event loop), ``params`` read
        from the query string (None when absent)."""

        async def route(request: Request) -> Response:
            try:
                authorized(request)
                return JSONResponse(await run_in_threadpool(compute, *(request.query_params.get(p) for p in params)))
            except Exception as exc:
                return failure(exc)

        return route

    async def query(request: Request) -> Response:
        try:
            authorized(request)
            params = await _query_params(request)
            sql = params.get("sql", "").strip()
            if not sql:
                raise Refused(400, 'no statement: pass it as ?sql=..., as the POST body, or as {"sql": ...}')
            fmt = _format(request, params.get("format"))
            try:
                max_rows = int(params["max_rows"]) if "max_rows" in params else None
            except ValueError:
                max_rows = 0
            if max_rows is not None and max_rows < 1:
                raise Refused(400, f"max_rows must be a whole number of at least 1, got {params['max_rows']!r}")
            served = await run_in_threadpool(service.answer, sql, as_of=params.get("as_of"), max_rows=max_rows)
            body = await run_in_threadpool(_body, served, fmt)
            headers = {} if fmt == "json" else {ANSWER_HEADER: json.dumps(served.meta(), default=_json_value)}
            return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)
        except Exception as exc:
            return failure(exc)

    async def dashboard_page(request: Request) -> Response:
        from lambda_pipeline.serving_layer.dashboard import PAGE

        try:
            authorized(request)
        except Refused as exc:
            return failure(exc)
        query_string = f"?{request.url.query}" if request.url.query else ""
        page = PAGE.replace("__REFRESH_MS__", str(DASHBOARD_REFRESH_MS)).replace("__QUERY__", query_string)
        return HTMLResponse(page)

    async def dashboard_script(request: Request) -> Response:
        from lambda_pipeline.serving_layer.dashboard import vega_bundle

        try:
            authorized(request)
            script = await run_in_threadpool(vega_bundle)
        except Exception as exc:
            return failure(exc)
        return Response(script, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    return Starlette(
        routes=[
            Route("/health", json_route(service.health)),
            Route("/query", query, methods=["GET", "POST"]),
            Route("/dashboard", dashboard_page),
            Route("/dashboard/vega.js", dashboard_script),
            Route("/dashboard/data", json_route(service.dashboard, "view")),
        ],
    )


# ---- running it -----------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServeSettings) -> str | None:
    """The token the server requires (None on loopback without one); refuses a non-loopback bind without it."""
    token = os.environ.get(settings.token_env) or None
    if token is None and not is_loopback(settings.host):
        raise LambdaError(
            f"serve.host is {settings.host}, not loopback: export {settings.token_env} (a long random value) "
            "so that clients must send it, or bind 127.0.0.1"
        )
    return token


def server_file(locations: Locations) -> Path | None:
    """Where a running server of this work directory says where it listens (local work directories only)."""
    workdir = local_path(locations.workdir)
    return None if workdir is None else workdir / SERVER_FILE


class QueryServer:
    """The server of one work directory, on a thread (:meth:`start`) or in the foreground (:meth:`run`)."""

    def __init__(self, spark: SparkSession, pipeline: Pipeline, locations: Locations, settings: ServeSettings) -> None:
        import uvicorn

        self.settings, self.locations = settings, locations
        self.service = QueryService(spark, pipeline, locations, settings)
        app = create_app(self.service, token=check_bind(settings))
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._announced: str | None = None

    @property
    def url(self) -> str:
        servers = getattr(self._server, "servers", None) or []
        port = servers[0].sockets[0].getsockname()[1] if servers else self.settings.port
        host = self.settings.host if ":" not in self.settings.host else f"[{self.settings.host}]"
        return f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> QueryServer:
        """Serve on a background thread; returns once the socket listens."""
        self._thread = threading.Thread(target=self._server.run, name="lambda-pipeline-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise LambdaError(f"the query server did not start on {self.settings.host}:{self.settings.port}")
            time.sleep(0.05)  # bounded by the deadline above
        self._announce()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._withdraw()

    def run(self, on_ready: Any = None) -> None:
        """Serve in the foreground until Ctrl-C (or SIGTERM)."""
        self.start()
        if on_ready is not None:
            on_ready(self.url)
        try:
            assert self._thread is not None
            while self._thread.is_alive():
                self._thread.join(timeout=1.0)
        finally:
            self.stop()

    def _announce(self) -> None:
        """Name this server in the work directory, for ``lambda-pipeline query``, unless a live one is named."""
        from lambda_pipeline.serving_layer.client import running_server

        path = server_file(self.locations)
        if path is not None and path.parent.is_dir() and (not path.exists() or running_server(path) is None):
            self._announced = self.url
            record = {"url": self.url, "pid": os.getpid(), "token_env": self.settings.token_env}
            path.write_text(json.dumps(record) + "\n", encoding="utf-8")

    def _withdraw(self) -> None:
        path = server_file(self.locations)
        if path is None:
            return
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("pid") == os.getpid() and record.get("url") == self._announced:
                path.unlink()
        except (OSError, ValueError):
            pass
