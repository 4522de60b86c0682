"""Checks the HTTP services of auth_services.py with urllib alone (no broker): the answers in
both conventions, ACL rules, failures and delays, request counts, the introspection
endpoint's client authentication and token answers, and start/stop."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from auth_services import Answer, AuthService, IntrospectionService, _matches


def post(url: str, fields: dict | None = None, *, form: bool = False, headers: dict | None = None, timeout: float = 5.0):
    """POSTs `fields` as JSON (or a form); returns (status, decoded JSON body or None)."""
    fields = fields or {}
    if form:
        data = urllib.parse.urlencode(fields).encode()
        ctype = "application/x-www-form-urlencoded"
    else:
        data = json.dumps(fields).encode()
        ctype = "application/json"
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    return status, (json.loads(body) if body else None)


def get(url: str, fields: dict, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(url + "?" + urllib.parse.urlencode(fields), timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def svc():
    with AuthService() as s:
        yield s


def test_authentication_in_emqx_style(svc):
    svc.add_user("alice", "pw", acl={"pub": ["a/#"]}, expire_at=2_000_000_000)
    status, body = post(svc.auth_url, {"clientid": "c1", "username": "alice", "password": "pw"})
    assert status == 200
    assert body == {"result": "allow", "acl": {"pub": ["a/#"]}, "expire_at": 2_000_000_000}
    assert post(svc.auth_url, {"username": "alice", "password": "no"}) == (200, {"result": "deny"})
    assert post(svc.auth_url, {"username": "zed", "password": "pw"}) == (200, {"result": "deny"})
    # Forms and GET queries are read too.
    assert post(svc.auth_url, {"username": "alice", "password": "pw"}, form=True)[1]["result"] == "allow"
    assert get(svc.auth_url, {"username": "alice", "password": "pw"})[1]["result"] == "allow"
    assert svc.count("/auth") == 5
    first = svc.asked("/auth")[0]
    assert first.method == "POST" and first.fields["clientid"] == "c1"
    assert svc.asked("/auth")[3].fields == {"username": "alice", "password": "pw"}


def test_authentication_in_go_auth_style_and_unknown_users_ignored():
    with AuthService(style="go-auth", unknown="ignore") as s:
        s.add_user("bob")  # any password
        assert post(s.auth_url, {"username": "bob", "password": "x"}) == (200, {"ok": True, "error": ""})
        status, body = post(s.auth_url, {"username": "carol", "password": "x"})
        assert (status, body) == (200, {"result": "ignore"})
        s.add_user("carol", "right")
        status, body = post(s.auth_url, {"username": "carol", "password": "wrong"})
        assert status == 403 and body["ok"] is False and body["error"]
    with pytest.raises(ValueError):
        AuthService(style="other")


def test_acl_rules_match_with_mqtt_wildcards(svc):
    svc.allow("alice", "publish", "sensors/+/temp")
    svc.allow("alice", "subscribe", "cmd/#")
    svc.allow(None, "all", "public/#")

    def acl(user, action, topic):
        fields = {"clientid": "c", "action": action, "topic": topic, "acc": 2 if action == "publish" else 4}
        if user is not None:
            fields["username"] = user
        return post(svc.acl_url, fields)[1]["result"]

    assert acl("alice", "publish", "sensors/1/temp") == "allow"
    assert acl("alice", "publish", "sensors/1/hum") == "deny"
    assert acl("alice", "subscribe", "cmd/x/y") == "allow"
    assert acl("alice", "publish", "cmd/x") == "deny"
    assert acl(None, "subscribe", "public/a") == "allow"
    assert acl(None, "publish", "public/a") == "allow"
    assert acl("nobody", "publish", "x") == "deny", "no rules: acl_unknown"
    assert svc.count("/acl") == 7 and svc.count("/auth") == 0
    assert svc.asked("/acl")[0].fields["acc"] == 2
    assert _matches("a/#", "a") and _matches("+/b", "x/b") and not _matches("a/+", "a/b/c")


def test_custom_answers_failures_and_delays(svc):
    svc.add_user("alice", "pw")
    svc.auth_answer = lambda req: Answer(200, {"result": "allow", "username": "svc"})
    assert post(svc.auth_url, {"username": "x"})[1] == {"result": "allow", "username": "svc"}
    svc.auth_answer = None

    svc.fail_with = 500
    assert post(svc.auth_url, {"username": "alice", "password": "pw"})[0] == 500
    svc.fail_with = None
    svc.failures["/acl"] = 503
    assert post(svc.acl_url, {"username": "alice"})[0] == 503
    assert post(svc.auth_url, {"username": "alice", "password": "pw"})[0] == 200

    svc.delay = 0.5
    start = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError, socket.timeout)):
        post(svc.auth_url, {"username": "alice", "password": "pw"}, timeout=0.1)
    svc.delay = 0.0
    # The slow answer's thread finishes on its own; the service keeps answering.
    assert post(svc.auth_url, {"username": "alice", "password": "pw"})[0] == 200
    assert time.monotonic() - start < 5
    assert svc.count() == 6
    svc.wait_for_requests(6)
    svc.reset()
    assert svc.count() == 0


def test_stop_refuses_new_connections():
    s = AuthService().start()
    url = s.auth_url
    assert post(url, {"username": "x"})[0] == 200
    s.stop()
    s.stop()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        post(url, {"username": "x"}, timeout=1)


def basic(ident: str, secret: str) -> dict:
    pair = f"{urllib.parse.quote_plus(ident)}:{urllib.parse.quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def test_introspection_checks_the_caller_and_answers_per_token():
    with IntrospectionService(client_id="broker", client_secret="s:3cret") as idp:
        claims = idp.add_token("tok-1", "alice", scope="mqtt", aud=["broker"], iss="https://idp")
        idp.add_token("old", "bob", expires_in=-10)
        creds = basic("broker", "s:3cret")
        url = idp.endpoint

        def ask(token, headers=creds, **extra):
            return post(url, {"token": token, "token_type_hint": "access_token", **extra}, form=True, headers=headers)

        status, body = ask("tok-1")
        assert status == 200 and body["active"] is True
        assert body["username"] == "alice" and body["scope"] == "mqtt" and body["aud"] == ["broker"]
        assert body["exp"] == claims["exp"] and body["exp"] > time.time()
        assert ask("unknown") == (200, {"active": False})
        assert ask("old") == (200, {"active": False}), "expired tokens are inactive"
        idp.expire_tokens = False
        assert ask("old")[1]["active"] is True, "unless told to report them as they are"
        idp.revoke("tok-1")
        assert ask("tok-1") == (200, {"active": False})

        assert ask("tok-1", headers={})[0] == 401
        assert ask("tok-1", headers=basic("broker", "wrong")) == (401, {"error": "invalid_client"})
        assert post(url, {}, form=True, headers=creds)[0] == 400
        assert get(url, {"token": "tok-1"})[0] == 405
        assert idp.count("/introspect") == 9
        first = idp.asked()[0]
        assert first.fields == {"token": "tok-1", "token_type_hint": "access_token"}

        idp.fail_with = 503
        assert ask("tok-1")[0] == 503
