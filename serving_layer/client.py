"""A small client of the query server (``lambda-pipeline serve``): Arrow or pandas results with their provenance.

No Spark and no JVM on this side: a notebook or a service imports this module, sends SQL over HTTP and gets
the rows as Arrow (``pyarrow``), the pin they were read at and each view's provenance::

    from lambda_pipeline.serving_layer.client import Client

    client = Client("http://127.0.0.1:8765")
    answer = client.query("SELECT page, sum(events) AS n FROM serving.page_activity GROUP BY page")
    answer.to_pandas(), answer.pin["master_table_version"], answer.provenance[0]["freshness_lag_seconds"]

The token, when the server requires one, comes from the argument or from ``LAMBDA_PIPELINE_SERVE_TOKEN``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.errors import LambdaError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from lambda_pipeline.core.locations import Locations

__all__ = ["Client", "RemoteAnswer", "ServedAnswer", "ServerError", "query_running_server", "running_server"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ANSWER_HEADER = "X-Lambda-Pipeline-Answer"
"""CSV and Arrow answers carry their pin, provenance and row count in this header, as JSON."""
TOKEN_ENV = "LAMBDA_PIPELINE_SERVE_TOKEN"


class ServerError(LambdaError):
    """The server refused or failed the request; ``status`` is the HTTP status (0: not reachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RemoteAnswer:
    """Rows as Arrow, whether the server cut them at its row limit, the pin and the provenance of each view."""

    table: pa.Table
    truncated: bool
    pin: dict[str, Any]
    provenance: list[dict[str, Any]]
    elapsed_ms: float

    def to_pandas(self) -> pd.DataFrame:
        return self.table.to_pandas()

    def meta(self) -> dict[str, Any]:
        """Everything but the rows: what the server sends beside them."""
        return {
            "row_count": self.table.num_rows,
            "truncated": self.truncated,
            "pin": self.pin,
            "provenance": self.provenance,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


class Client:
    """Talks to one query server. ``timeout`` bounds each request (the server bounds the query itself)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 120.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.token = token if token is not None else os.environ.get("LAMBDA_PIPELINE_SERVE_TOKEN") or None

    def _request(self, path: str, body: dict[str, Any] | None = None, accept: str = "application/json") -> Any:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode("utf-8"), "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read().decode("utf-8"))
            except ValueError:
                body = {}
            error = ServerError(exc.code, f"{body.get('error') or exc.reason}")
            if isinstance(body.get("exit_code"), int):  # the same exit code as a query answered locally
                error.exit_code = body["exit_code"]
            raise error from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerError(0, f"the query server at {self.url} is not reachable: {exc}") from None

    def health(self) -> dict[str, Any]:
        """The server's pipeline, views and current pin."""
        with self._request("/health") as response:
            result: dict[str, Any] = json.loads(response.read().decode("utf-8"))
            return result

    def query(self, sql: str, *, as_of: str | None = None, max_rows: int | None = None) -> RemoteAnswer:
        """Run ``sql`` (read-only, checked by the server's guard) and return its rows as Arrow."""
        import pyarrow as pa

        body: dict[str, Any] = {"sql": sql, "format": "arrow", "as_of": as_of, "max_rows": max_rows}
        with self._request("/query", body, accept=ARROW_STREAM) as response:
            meta = json.loads(response.headers.get(ANSWER_HEADER) or "{}")
            table = pa.ipc.open_stream(response.read()).read_all()
        return RemoteAnswer(
            table,
            bool(meta.get("truncated")),
            meta.get("pin", {}),
            meta.get("provenance", []),
            meta.get("elapsed_ms", 0.0),
        )


def running_server(record: Path, *, timeout: float = 2.0) -> Client | None:
    """A client of the server a work directory's ``record`` file names, if that server answers; else None."""
    try:
        announced = json.loads(record.read_text(encoding="utf-8"))
        url = str(announced["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    token = os.environ.get(str(announced.get("token_env") or TOKEN_ENV)) or None
    client = Client(url, token=token, timeout=timeout)
    try:
        client.health()
    except ServerError:
        return None
    client.timeout = 600.0  # found: the query itself may take longer than the probe
    return client


def query_running_server(
    locations: Locations, sql: str, *, as_of: str | None = None, max_rows: int | None = None
) -> ServedAnswer | None:
    """The answer of the query server running for ``locations``' work directory, or None when none answers.

    ``lambda-pipeline query`` asks it first: the server's warm session answers in milliseconds where a new
    driver takes seconds to start.
    """
    from lambda_pipeline.serving_layer.server import server_file

    record = server_file(locations)
    client = running_server(record) if record is not None and record.exists() else None
    if client is None:
        return None
    return ServedAnswer(client.url, client.query(sql, as_of=as_of, max_rows=max_rows))


@dataclass(frozen=True)
class ServedAnswer:
    """An answer and the server that gave it."""

    url: str
    answer: RemoteAnswer
