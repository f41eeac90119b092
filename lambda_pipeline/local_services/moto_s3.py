"""moto's S3 server, as ``S3Server`` runs it: every request that changes an object is atomic, as on AWS.

moto's own server answers requests in threads and checks a conditional write (``If-None-Match: *``,
``If-Match``) apart from the write itself, so two writes racing for one key could both pass the check.
S3 decides them atomically, and the pipeline's leases rely on that (``core/lease_records.py``). Here each
request that writes (PUT, POST, DELETE) runs alone; reads stay concurrent. Nothing else of moto changes.

Run as ``python -m lambda_pipeline.local_services.moto_s3 -H 127.0.0.1 -p PORT``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


def main(argv: Sequence[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access line per request
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, one_write_at_a_time(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
