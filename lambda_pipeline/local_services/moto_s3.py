"""moto's S3 server, as ``S3Server`` runs it: every request that changes an object is atomic, as on AWS.

moto's own server answers requests in threads and checks a conditional write (``If-None-Match: *``,
``If-Match``) apart from the write itself, so two writes racing for one key could both pass the check.
S3 decides them atomically, and the pipeline's leases rely on that (``core/lease_records.py``). Here each
request that writes (PUT, POST, DELETE) runs alone; reads stay concurrent. Nothing else of moto changes.

``--request-log FILE`` appends one line per request to ``FILE``: method, path (``/bucket/key``), query and
status, tab-separated: what ``bench/s3_requests.py`` and the tests count the pipeline's requests by. One
buffered write per line, no parsing: the server does not slow down noticeably.

Run as ``python -m lambda_pipeline.local_services.moto_s3 -H 127.0.0.1 -p PORT [--request-log FILE]``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

_WRITES = frozenset({"PUT", "POST", "DELETE"})

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def one_write_at_a_time(app: WsgiApp) -> WsgiApp:
    """``app`` with its writing requests serialized, each response read whole inside the lock."""
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _WRITES:
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    return serialized


def request_logged(app: WsgiApp, log: TextIO) -> WsgiApp:
    """``app`` writing a line per request to ``log`` once its status is known: method, path, query, status.

    Status ``-`` marks a request whose handler raised before answering.
    """
    lock = threading.Lock()

    def logged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status = ["-"]

        def starting(code: str, headers: Any, *rest: Any) -> Any:
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, *rest)

        try:
            return app(environ, starting)
        finally:
            line = "\t".join(
                (environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
            )
            with lock:
                log.write(f"{line}\t{status[0]}\n")
                log.flush()  # another process counts the lines while the server runs

    return logged


def main(argv: Sequence[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--request-log", help="append one line per request to this file")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access line per request
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    served = one_write_at_a_time(app)
    if args.request_log:
        served = request_logged(served, open(args.request_log, "a", encoding="utf-8"))  # noqa: SIM115 (server's life)
    run_simple(args.host, args.port, served, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
