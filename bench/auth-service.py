#!/usr/bin/env python3
"""For bench/acl.sh: an HTTP authentication and ACL service that allows everything
(EMQX's convention, ``200 {"result": "allow"}``) and counts the requests, and an HS256 token
for the JWT runs, made with the standard library.

    bench/auth-service.py serve PORT COUNT_FILE   # until killed; COUNT_FILE gets the count
    bench/auth-service.py token SECRET            # prints a token valid for a day, with an
                                                  # ACL claim granting bench/#
"""

import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret: str) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "sub": "bench",
        "exp": int(time.time()) + 86400,
        "acl": {"pub": ["bench/#"], "sub": ["bench/#"]},
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def serve(port: int, count_file: str) -> None:
    lock = threading.Lock()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("content-length", "0")))
            body = b'{"result": "allow"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            with lock:
                count[0] += 1
                with open(count_file, "w") as f:
                    f.write(str(count[0]))

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "token":
        print(token(sys.argv[2]))
    else:
        serve(int(sys.argv[2]), sys.argv[3])
