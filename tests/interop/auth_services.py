"""HTTP services for the authentication tests, each in a thread on 127.0.0.1 on a free port.

* ``AuthService``: an authentication and ACL service in the conventions the broker's HTTP
  backend understands (``[auth.http]``): EMQX's (``200 {"result": "allow" | "deny" |
  "ignore"}``) or mosquitto-go-auth's (``200 {"ok": true}`` / ``403 {"ok": false, "error":
  ...}``). Authentication is answered on ``/auth``, ACL questions on ``/acl``; the test
  sets users, passwords, extra answer fields (``acl``, ``expire_at``, ``username``) and
  which topics each user may publish or subscribe to.
* ``IntrospectionService``: an OAuth 2.0 token introspection endpoint (RFC 7662) on
  ``/introspect`` (``endpoint``) that checks the caller's HTTP basic credentials and answers
  ``{"active": true, ...claims}`` for the tokens the test adds, ``{"active": false}``
  otherwise.

Both record every request (``requests``, ``count()``), can answer late (``delay``, seconds)
or fail (``fail_with``: a status such as 500), and are used as context managers or with
``start()`` / ``stop()``::

    with AuthService() as svc:
        svc.add_user("alice", "pw", acl={"pub": ["a/#"]})
        svc.allow("alice", "subscribe", "in/#")
        config = f'url = "{svc.auth_url}"\\nacl_url = "{svc.acl_url}"'
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote_plus, urlsplit

HOST = "127.0.0.1"
# Largest request body read; a larger one is answered 413.
MAX_BODY = 1 << 20


@dataclass
class Request:
    """One request as a service saw it."""

    method: str
    path: str
    headers: dict[str, str]
    # The JSON object, form or query fields sent (a password that was not UTF-8 stays as
    # the broker sent it: base64, with "password_base64").
    fields: dict[str, Any]
    body: bytes
    at: float = field(default_factory=time.monotonic)


@dataclass
class Answer:
    """What a service answers: a status and a body (a dict is sent as JSON)."""

    status: int = 200
    body: dict | str | None = None
    delay: float = 0.0


def _matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching of `topic` (wildcards in it compared as text) by `pattern`."""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(p) == len(t)


class _Service:
    """A ThreadingHTTPServer in a daemon thread that hands each request to `_answer`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        # Seconds every answer waits (a slow service); per path in `delays`.
        self.delay: float = 0.0
        self.delays: dict[str, float] = {}
        # A status every request gets instead of its answer (e.g. 500, 503); per path in
        # `failures`.
        self.fail_with: int | None = None
        self.failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Open connections, closed by stop(): a client's kept-alive connection must not
        # outlive the service.
        self._conns: set[socket.socket] = set()

    # -- lifecycle --

    def start(self) -> "_Service":
        if self._server is not None:
            return self
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                service._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                service._handle(self)

            def setup(self) -> None:
                super().setup()
                with service._lock:
                    service._conns.add(self.connection)

            def finish(self) -> None:
                with service._lock:
                    service._conns.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer((HOST, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    # -- what was asked --

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def asked(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def wait_for_requests(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(path) >= n:
                return self.asked(path)
            time.sleep(0.01)
        raise AssertionError(f"expected {n} requests to {path or 'any path'}, got {self.count(path)}")

    # -- serving --

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(h, Answer(413, {"error": "too large"}))
            return
        body = h.rfile.read(length) if length else b""
        split = urlsplit(h.path)
        headers = {k.lower(): v for k, v in h.headers.items()}
        fields: dict[str, Any] = {}
        ctype = headers.get("content-type", "")
        try:
            if body and ctype.startswith("application/json"):
                parsed = json.loads(body)
                fields = parsed if isinstance(parsed, dict) else {}
            elif body:
                fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
            elif split.query:
                fields = dict(parse_qsl(split.query, keep_blank_values=True))
        except (ValueError, UnicodeDecodeError):
            fields = {}
        req = Request(h.command, split.path, headers, fields, body)
        with self._lock:
            self.requests.append(req)
        failure = self.failures.get(req.path, self.fail_with)
        answer = Answer(failure, {"error": "failing on purpose"}) if failure else self._answer(req)
        delay = max(answer.delay, self.delays.get(req.path, self.delay))
        if delay > 0:
            time.sleep(delay)
        self._send(h, answer)

    def _answer(self, req: Request) -> Answer:
        raise NotImplementedError

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, answer: Answer) -> None:
        if answer.body is None:
            payload, ctype = b"", None
        elif isinstance(answer.body, dict):
            payload, ctype = json.dumps(answer.body).encode(), "application/json"
        else:
            payload, ctype = answer.body.encode(), "text/plain"
        try:
            h.send_response(answer.status)
            if ctype:
                h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The broker gave up waiting (its timeout): nothing to answer to.
            pass


@dataclass
class _User:
    password: str | None
    # Added to an allowing authentication answer: "acl", "expire_at", "username", ...
    extra: dict[str, Any]


class AuthService(_Service):
    """Authentication on ``/auth`` and ACL checks on ``/acl``.

    ``style`` is ``"emqx"`` (``{"result": ...}``, a refusal is ``200 {"result": "deny"}``) or
    ``"go-auth"`` (``200 {"ok": true}``, a refusal is ``403 {"ok": false, "error": ...}``).
    Users not added are answered ``unknown`` (``"deny"`` by default; ``"ignore"`` to let the
    next backend decide). ACL questions are allowed when a rule added with ``allow`` matches
    the topic (MQTT wildcards), refused otherwise, or answered ``acl_unknown`` for users with
    no rule at all. ``auth_answer`` / ``acl_answer``, when set, answer instead (a function of
    the ``Request``).
    """

    def __init__(self, style: str = "emqx", unknown: str = "deny", acl_unknown: str = "deny") -> None:
        super().__init__()
        if style not in ("emqx", "go-auth"):
            raise ValueError(f"style: emqx or go-auth, not {style!r}")
        self.style = style
        self.unknown = unknown
        self.acl_unknown = acl_unknown
        self.users: dict[str, _User] = {}
        # (username, action) -> topic patterns; action is "publish" or "subscribe".
        self.rules: dict[tuple[str | None, str], list[str]] = {}
        self.auth_answer: Callable[[Request], Answer] | None = None
        self.acl_answer: Callable[[Request], Answer] | None = None

    @property
    def auth_url(self) -> str:
        return self.url("/auth")

    @property
    def acl_url(self) -> str:
        return self.url("/acl")

    def add_user(self, username: str, password: str | None = None, **extra: Any) -> None:
        """`password` None: any password. `extra`: fields of the allowing answer, e.g.
        ``acl={"pub": [...], "sub": [...]}``, ``expire_at=int(time.time()) + 60``,
        ``username="other"``."""
        with self._lock:
            self.users[username] = _User(password, dict(extra))

    def remove_user(self, username: str) -> None:
        with self._lock:
            self.users.pop(username, None)

    def allow(self, username: str | None, action: str, *topics: str) -> None:
        """Lets `username` (None: clients without one) `action` ("publish", "subscribe" or
        "all") the topics (MQTT filters)."""
        actions = ("publish", "subscribe") if action == "all" else (action,)
        with self._lock:
            for a in actions:
                if a not in ("publish", "subscribe"):
                    raise ValueError(f"action: publish, subscribe or all, not {action!r}")
                self.rules.setdefault((username, a), []).extend(topics)

    def _verdict(self, result: str, error: str = "", **extra: Any) -> Answer:
        if self.style == "emqx":
            return Answer(200, {"result": result, **extra})
        if result == "allow":
            return Answer(200, {"ok": True, "error": "", **extra})
        if result == "ignore":
            # mosquitto-go-auth has no "not mine"; EMQX's word is understood as well.
            return Answer(200, {"result": "ignore"})
        return Answer(403, {"ok": False, "error": error or "denied"})

    def _answer(self, req: Request) -> Answer:
        if req.path == "/auth":
            return self.auth_answer(req) if self.auth_answer else self._authenticate(req)
        if req.path == "/acl":
            return self.acl_answer(req) if self.acl_answer else self._authorize(req)
        return Answer(404, {"error": f"no {req.path}"})

    def _authenticate(self, req: Request) -> Answer:
        name = req.fields.get("username")
        with self._lock:
            user = self.users.get(name) if isinstance(name, str) else None
        if user is None:
            return self._verdict(self.unknown, "unknown user")
        if user.password is not None and req.fields.get("password") != user.password:
            return self._verdict("deny", "wrong password")
        return self._verdict("allow", **user.extra)

    def _authorize(self, req: Request) -> Answer:
        name = req.fields.get("username")
        action = req.fields.get("action")
        topic = req.fields.get("topic", "")
        with self._lock:
            has_rules = any(u == name for (u, _) in self.rules)
            patterns = list(self.rules.get((name, action), []))
        if not has_rules:
            return self._verdict(self.acl_unknown)
        if any(_matches(p, topic) for p in patterns):
            return self._verdict("allow")
        return self._verdict("deny", f"{action} {topic} not allowed")


@dataclass
class _Token:
    active: bool
    claims: dict[str, Any]


class IntrospectionService(_Service):
    """An RFC 7662 endpoint on ``/introspect`` (the ``endpoint`` property).

    Callers must authenticate with HTTP basic ``client_id`` / ``client_secret`` (form-encoded
    first, RFC 6749 section 2.3.1), or get ``401 {"error": "invalid_client"}``. A request
    without ``token`` gets 400. Tokens not added are inactive.
    """

    def __init__(self, client_id: str = "starling", client_secret: str = "s3cret") -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens: dict[str, _Token] = {}
        # Whether a token past its exp is answered inactive, as servers do; False answers it
        # active with its exp, to test the broker's own check.
        self.expire_tokens = True

    @property
    def endpoint(self) -> str:
        """The introspection endpoint's URL."""
        return self.url("/introspect")

    def add_token(
        self,
        token: str,
        username: str | None = None,
        *,
        sub: str | None = None,
        expires_in: float | None = 3600,
        exp: int | None = None,
        scope: str | None = None,
        aud: str | list[str] | None = None,
        iss: str | None = None,
        active: bool = True,
        **claims: Any,
    ) -> dict[str, Any]:
        """Adds a token; `exp` (Unix seconds) defaults to now + `expires_in` (None: no exp).
        Returns the claims it is answered with."""
        c: dict[str, Any] = {"token_type": "Bearer", "iat": int(time.time())}
        if exp is None and expires_in is not None:
            exp = int(time.time() + expires_in)
        for k, v in (("username", username), ("sub", sub), ("exp", exp), ("scope", scope), ("aud", aud), ("iss", iss)):
            if v is not None:
                c[k] = v
        c.update(claims)
        with self._lock:
            self.tokens[token] = _Token(active, c)
        return c

    def revoke(self, token: str) -> None:
        with self._lock:
            if token in self.tokens:
                self.tokens[token].active = False

    def _authorized(self, req: Request) -> bool:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Basic "):
            return False
        try:
            pair = base64.b64decode(auth[6:], validate=True).decode()
        except ValueError:
            return False
        ident, _, secret = pair.partition(":")
        return unquote_plus(ident) == self.client_id and unquote_plus(secret) == self.client_secret

    def _answer(self, req: Request) -> Answer:
        if req.path != "/introspect":
            return Answer(404, {"error": f"no {req.path}"})
        if req.method != "POST":
            return Answer(405, {"error": "invalid_request"})
        if not self._authorized(req):
            return Answer(401, {"error": "invalid_client"})
        token = req.fields.get("token")
        if not token:
            return Answer(400, {"error": "invalid_request"})
        with self._lock:
            t = self.tokens.get(token)
        if t is None or not t.active:
            return Answer(200, {"active": False})
        exp = t.claims.get("exp")
        if self.expire_tokens and isinstance(exp, (int, float)) and exp <= time.time():
            return Answer(200, {"active": False})
        return Answer(200, {"active": True, **t.claims})
