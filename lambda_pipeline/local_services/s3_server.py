"""A real S3-compatible HTTP server on 127.0.0.1 (moto's standalone server), for local runs and tests.

The pipeline reaches it exactly as it reaches AWS: ``s3a://`` paths through hadoop-aws, over HTTP,
with the S3 protocol. Nothing is patched in-process: the server is a separate Python process, started
and stopped here, so the jobs, the generator and the tests see the same endpoint.

moto keeps buckets and objects in the server's memory: stopping the server discards them (large
objects spill to ``<base_dir>/spool`` while it runs). Log, pid and state files live under ``base_dir``;
the pid file lets one process start the server and another one query or stop it.

Started with ``request_log=True`` (``lambda-pipeline s3 start --request-log``), the server also writes one
line per request to ``<base_dir>/s3-requests.log``; :class:`RequestLog` reads and classifies them, to count
what a job costs on S3 (``bench/s3_requests.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambda_pipeline.core.errors import EnvironmentProblem, LambdaError
from lambda_pipeline.local_services.process import HOST, ManagedProcess, free_port

__all__ = [
    "DEFAULT_PORT",
    "RequestLog",
    "S3Request",
    "S3Server",
    "S3ServerStatus",
    "free_port",
    "server_package_missing",
]

DEFAULT_PORT = 9000
_POLL_SECONDS = 0.1
_REQUEST_TIMEOUT = 10.0
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# moto's server, each writing request atomic as on S3 (conditional writes included).
_LAUNCHER = "lambda_pipeline.local_services.moto_s3"
_INSTALL_HINT = "install it with: pip install -e '.[local]' (or pip install 'moto[server]')"


def server_package_missing() -> str | None:
    """Why moto's server cannot run in this Python, or None when it can."""
    for module in ("moto", "moto.server", "flask", "werkzeug"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"the local S3 server needs the Python package providing '{module}' (moto[server]); {_INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class S3ServerStatus:
    """What ``lambda-pipeline s3 status`` shows; ``pid`` is None when not running."""

    running: bool
    pid: int | None
    port: int
    base_dir: Path
    log_file: Path

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass(frozen=True)
class S3Request:
    """One line of the request log: a request as the server saw it (path-style addressing)."""

    method: str
    bucket: str
    key: str
    query: str
    status: str

    @property
    def kind(self) -> str:
        """``LIST`` (a GET of the bucket: ListObjects), else the method: ``HEAD``, ``GET``, ``PUT``, ``POST``,
        ``DELETE``."""
        return "LIST" if self.method == "GET" and not self.key else self.method

    @property
    def listed_prefix(self) -> str:
        """The ``prefix`` a LIST asked for ('' for any other request)."""
        if self.kind != "LIST":
            return ""
        return urllib.parse.parse_qs(self.query).get("prefix", [""])[0]


class RequestLog:
    """The request log of a server started with ``request_log=True``, read from any process.

    ``mark()`` notes where the log ends; ``since(mark)`` returns the requests written after it.
    """

    def __init__(self, file: Path) -> None:
        self.file = file

    def mark(self) -> int:
        return self.file.stat().st_size if self.file.exists() else 0

    def since(self, mark: int = 0) -> list[S3Request]:
        with self.file.open("rb") as log:
            log.seek(mark)
            text = log.read().decode("utf-8", errors="replace")
        requests = []
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) != 4:
                continue  # a line being written right now
            method, path, query, status = fields
            bucket, _, key = urllib.parse.unquote(path).lstrip("/").partition("/")
            requests.append(S3Request(method, bucket, key, query, status))
        return requests


class S3Server(ManagedProcess):
    """One moto server process bound to 127.0.0.1, its files kept under ``base_dir``.

    ``start`` is idempotent (a no-op when this server already runs on the same port). Any process may
    call ``status``/``stop`` for the same ``base_dir``. Requests are unsigned: moto does not check
    credentials, and this client needs none.
    """

    _file_stem = "s3-server"
    _label = "the S3 server"
    _base_dir_role = "of"
    _cli_verb = "s3"
    _port_hint = f"--port, and s3.endpoint=http://{HOST}:<port> for the jobs"
    _ready_poll_seconds = _POLL_SECONDS
    _abandon_grace_seconds = 5.0  # a start that timed out: SIGTERM, SIGKILL only after 5 s

    def __init__(
        self, base_dir: str | Path, port: int = DEFAULT_PORT, region: str = "us-east-1", *, request_log: bool = False
    ) -> None:
        super().__init__(base_dir, port)
        self.region = region
        self.request_log = request_log

    def __repr__(self) -> str:
        return f"S3Server({str(self.base_dir)!r}, port={self.port})"

    # -- files ----------------------------------------------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        """Where moto spills objects above its in-memory buffer (its TMPDIR)."""
        return self.base_dir / "spool"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def request_log_file(self) -> Path:
        """Where a server started with ``request_log=True`` writes a line per request."""
        return self.base_dir / "s3-requests.log"

    def requests(self) -> RequestLog:
        """The request log; an error if this server was started without it."""
        if not self._state().get("request_log"):
            raise LambdaError(
                f"the S3 server of {self.base_dir} keeps no request log; restart it with request logging "
                "('lambda-pipeline s3 stop', then 'lambda-pipeline s3 start --request-log')"
            )
        return RequestLog(self.request_log_file)

    # -- process identity ---------------------------------------------------------------------------------------
    @property
    def _address(self) -> str:
        return self.endpoint

    def _owns(self, cmdline: str) -> bool:
        return _LAUNCHER in cmdline and f"-p {self._recorded_port()}" in cmdline

    def status(self) -> S3ServerStatus:
        """Whether this ``base_dir``'s server runs, from any process."""
        pid, port = self._running() or (None, self.port)
        return S3ServerStatus(pid is not None, pid, port, self.base_dir, self.log_file)

    # -- start ----------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it answers S3 requests (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        if self._already_running():
            self._await_ready(deadline, None)
            return
        missing = server_package_missing()
        if missing:
            raise EnvironmentProblem(missing)
        self._check_free(self.port)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(exist_ok=True)
        self._save_state(port=self.port, region=self.region, request_log=self.request_log)
        env = {**os.environ, "TMPDIR": str(self.spool_dir), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", _LAUNCHER, "-H", HOST, "-p", str(self.port)]
        if self.request_log:
            command += ["--request-log", str(self.request_log_file)]
        self._await_ready(deadline, self._spawn(command, "the S3 server (moto)", env))

    def _answers(self, remaining: float) -> bool:
        """ListBuckets succeeds; a refused connection or an error status raises, i.e. not ready yet."""
        self._request("GET", "/", timeout=1.0)
        return True

    # -- stop -----------------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, SIGKILL after ``timeout``; False only if it had to be killed. Not running is not an error.

        moto keeps the objects in memory: they are gone once the server stops.
        """
        return super().stop(timeout)

    # -- S3 requests (unsigned; enough to set up buckets and to look at what the pipeline wrote) -----------------
    def _request(
        self, method: str, path: str, query: dict[str, str] | None = None, body: bytes | None = None, timeout: float = 0
    ) -> bytes:
        url = self.endpoint + urllib.parse.quote(path) + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(request, timeout=timeout or _REQUEST_TIMEOUT) as response:
            return bytes(response.read())

    def _s3_call(self, what: str, method: str, path: str, **kwargs: Any) -> bytes:
        try:
            return self._request(method, path, **kwargs)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise LambdaError(f"the S3 server refused to {what} (HTTP {exc.code}): {detail}") from None
        except OSError as exc:
            raise EnvironmentProblem(
                f"could not {what} on the S3 server {self.endpoint} ({exc}); is it running? "
                "(check with: lambda-pipeline s3 status)"
            ) from None

    def buckets(self) -> list[str]:
        root = ET.fromstring(self._s3_call("list buckets", "GET", "/"))
        return [e.text or "" for e in root.iter(f"{_S3_NS}Name")]

    def create_bucket(self, name: str) -> bool:
        """Create ``name`` (path-style); False if it already existed."""
        if name in self.buckets():
            return False
        body = None
        if self.region != "us-east-1":
            body = (
                f'<CreateBucketConfiguration xmlns="{_S3_NS[1:-1]}">'
                f"<LocationConstraint>{self.region}</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        self._s3_call(f"create bucket {name!r}", "PUT", f"/{name}", body=body)
        return True

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, all pages)."""
        keys: list[str] = []
        query = {"list-type": "2", "prefix": prefix}
        while True:
            root = ET.fromstring(self._s3_call(f"list {bucket}/{prefix}", "GET", f"/{bucket}", query=query))
            keys += [c.findtext(f"{_S3_NS}Key") or "" for c in root.iter(f"{_S3_NS}Contents")]
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
            if root.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
                return keys
            query = {**query, "continuation-token": token}
