"""A real S3-compatible HTTP server on 127.0.0.1 (moto's standalone server), for local runs and tests.

The pipeline reaches it exactly as it reaches AWS: ``s3a://`` paths through hadoop-aws, over HTTP,
with the S3 protocol. Nothing is patched in-process: the server is a separate Python process, started
and stopped here, so the jobs, the generator and the tests see the same endpoint.

moto keeps buckets and objects in the server's memory: stopping the server discards them (large
objects spill to ``<base_dir>/spool`` while it runs). Log, pid and state files live under ``base_dir``;
the pid file lets one process start the server and another one query or stop it.
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

__all__ = ["DEFAULT_PORT", "S3Server", "S3ServerStatus", "free_port", "server_package_missing"]

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

    def __init__(self, base_dir: str | Path, port: int = DEFAULT_PORT, region: str = "us-east-1") -> None:
        super().__init__(base_dir, port)
        self.region = region

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
        self._save_state(port=self.port, region=self.region)
        env = {**os.environ, "TMPDIR": str(self.spool_dir), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", _LAUNCHER, "-H", HOST, "-p", str(self.port)]
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
