#!/usr/bin/env python3
"""A webhook target for bench/plugins.sh: answers every POST with 204 at once and counts the
events it received (the JSON arrays' lengths), written to COUNT_FILE at exit.

    python3 bench/webhook-sink.py PORT COUNT_FILE
"""

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, COUNT_FILE = int(sys.argv[1]), sys.argv[2]
events = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        global events
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            events += len(json.loads(body))
        except ValueError:
            pass
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def finish(*_):
    with open(COUNT_FILE, "w") as f:
        f.write(str(events))
    sys.exit(0)


signal.signal(signal.SIGTERM, finish)
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
