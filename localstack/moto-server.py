"""moto's S3 server with its requests handled one at a time.

moto_server answers each connection on its own thread, and moto checks a
conditional write's precondition and stores the object as two steps with
nothing held between them: two create-only PUTs (If-None-Match: *) of one
key that arrive together can both succeed (seen in CI: the store
conformance check `create_race`, two winners). Real S3, SeaweedFS and
LocalStack decide such races atomically, and shoal's commit protocol
relies on it. This runs moto's own WSGI application behind one lock, so a
request's checks and writes happen with no other request in between;
connections still get their own threads (keep-alive works as before).

Usage: python moto-server.py HOST PORT
"""

import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto_server sets it
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # as moto_server runs it
    lock = threading.Lock()

    def one_at_a_time(environ, start_response):
        with lock:
            # moto builds whole responses: nothing is read from the
            # backend after the call returns.
            return list(app(environ, start_response))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(
        host,
        port,
        one_at_a_time,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
