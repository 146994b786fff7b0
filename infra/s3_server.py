"""moto's S3 server, one request at a time: the local stand-in for S3 that `make up` and the tests run.

    .venv/bin/python infra/s3_server.py -H 127.0.0.1 -p 5055

S3 applies a conditional write (`If-None-Match: *`, `If-Match: <etag>`) atomically: of two racing writers only one
succeeds. moto's server answers requests on threads with no lock, and its PUT checks the condition and stores the
object in two separate steps, so two racing conditional PUTs can both succeed (moto/s3/responses.py, put_object).
cogflow's S3 lease (pipeline/lease.py) is built on that guarantee, so on plain moto two writers could both hold a
lake's lease: seen once in the test suite under load, two threads in the lease at the same time. Running each
request alone behind one lock gives moto S3's atomic conditional writes. Nothing here changes what moto answers.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterable

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server


class OneRequestAtATime:
    """A WSGI app that runs `app` for one request at a time, its whole answer included."""

    def __init__(self, app: Callable) -> None:
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        with self.lock:
            answer = self.app(environ, start_response)
            try:
                return [b"".join(answer)]  # moto's answers are in memory already: drawing them out here is cheap
            finally:
                if hasattr(answer, "close"):
                    answer.close()


def make_s3_server(host: str, port: int) -> BaseWSGIServer:
    """moto's S3 API on host:port (0: a free port), requests handled on threads, one at a time."""
    app = OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
    return make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5055)
    args = parser.parse_args()
    server = make_s3_server(args.host, args.port)
    print(f"S3 (moto, one request at a time) on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
