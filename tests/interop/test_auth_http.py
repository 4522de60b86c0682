"""Authentication and ACLs answered by an HTTP service, and OAuth 2.0 token introspection
(RFC 7662), against real local services started by each test (``auth_services.py``) and
paho-mqtt clients: allow and deny, the cache, a slow service, 5xx answers and a dead service
(fail closed, the broker keeps serving), the failure mode ``pass`` falling through to a
password file, and introspected tokens (active, revoked, expired, the username they carry).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import pytest

from auth_services import AuthService, IntrospectionService
from conftest import BrokerProcess, free_port
from helpers import V5, V311, Client, unique_id, wait_for

pytestmark = pytest.mark.starling_only

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86


def start_broker(tmp_path, auth: str, listener: str, extra_listener: bool = True) -> BrokerProcess:
    """A broker whose first listener uses `listener` keys, with `auth` as its [auth] tables;
    a second, open listener on a free port checks that the broker keeps serving."""
    second = ""
    if extra_listener:
        second = f"""
[[listener]]
bind = "127.0.0.1:{free_port()}"
allow_anonymous = true
"""
    config = f"""
[[listener]]
bind = "127.0.0.1:1883"
{listener}
{second}
{auth}
"""
    b = BrokerProcess(tmp_path, config)
    b.start()
    return b


def open_port(b: BrokerProcess) -> int:
    """The port of the second (open) listener, read back from the config."""
    text = (b.workdir / "starling.toml").read_text()
    binds = [line for line in text.splitlines() if line.startswith("bind = ")]
    return int(binds[1].split(":")[-1].rstrip('"'))


def client(b: BrokerProcess, user: str | None, password: str | None, *, version: int = V5,
           expect_rc: int | None = 0, client_id: str | None = None) -> Client:
    c = Client(b.address, client_id=client_id or unique_id("auth"), version=version, connect=False)
    if user is not None:
        c.c.username_pw_set(user, password)
    c.connect(expect_rc=expect_rc)
    return c


def metrics(b: BrokerProcess) -> str:
    with urllib.request.urlopen(f"{b.http_url}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


@pytest.mark.parametrize("style", ["emqx", "go-auth"])
def test_http_service_authenticates_and_authorizes_with_a_cache(tmp_path, style):
    svc = AuthService(style=style).start()
    try:
        svc.add_user("alice", "pw")
        svc.allow("alice", "publish", "a/#")
        svc.allow("alice", "subscribe", "a/#")
        b = start_broker(
            tmp_path,
            f"""
[auth.http]
url = "{svc.auth_url}"
acl_url = "{svc.acl_url}"
cache_ttl_secs = 60
""",
            'auth = ["http"]\nacl = ["http"]\nallow_anonymous = false',
        )
        try:
            alice = client(b, "alice", "pw")
            assert svc.asked("/auth")[-1].fields["username"] == "alice"
            client(b, "alice", "wrong", expect_rc=BAD_CREDENTIALS).close()
            client(b, "mallory", "pw", expect_rc=BAD_CREDENTIALS).close()
            # The service refuses clients it does not know, anonymous ones too.
            client(b, None, None, expect_rc=BAD_CREDENTIALS).close()

            assert alice.subscribe("a/#", qos=1) == [1]
            assert alice.subscribe("b/#", qos=1) == [NOT_AUTHORIZED]
            alice.publish("a/x", b"one", qos=1)
            alice.collector.wait_one("a/x")
            asked = svc.count("/acl")
            for _ in range(5):
                alice.publish("a/x", b"again", qos=1)
            alice.collector.wait(6, "a/x")
            assert svc.count("/acl") == asked, "answers come from the cache"
            alice.publish("b/x", b"no", qos=1)
            wait_for(lambda: any(rc.value == NOT_AUTHORIZED for _m, rc, _p in alice.publish_acks),
                     what="PUBACK 0x87 for b/x")
            alice.collector.expect_none("b/x")
            text = metrics(b)
            assert metric(text, "starling_auth_backend_answers_total", backend="http", result="allow") >= 1
            assert metric(text, "starling_auth_backend_answers_total", backend="http", result="deny") >= 2
            alice.close()
        finally:
            b.stop()
    finally:
        svc.stop()


def test_a_slow_failing_or_dead_service_fails_closed_and_the_broker_keeps_serving(tmp_path):
    svc = AuthService().start()
    try:
        svc.add_user("alice", "pw")
        b = start_broker(
            tmp_path,
            f"""
[auth.http]
url = "{svc.auth_url}"
timeout_ms = 300
cache_ttl_secs = 0
""",
            'auth = ["http"]\nallow_anonymous = false',
        )
        try:
            client(b, "alice", "pw").close()

            svc.delay = 2.0
            t0 = time.monotonic()
            client(b, "alice", "pw", expect_rc=NOT_AUTHORIZED).close()
            assert time.monotonic() - t0 < 1.8, "the timeout bounds the wait"
            svc.delay = 0.0

            svc.fail_with = 503
            client(b, "alice", "pw", expect_rc=NOT_AUTHORIZED, version=V311).close()
            svc.fail_with = None

            svc.stop()
            client(b, "alice", "pw", expect_rc=NOT_AUTHORIZED).close()
            # Everyone else is served meanwhile.
            other = Client(("127.0.0.1", open_port(b)), version=V5)
            other.subscribe("t", qos=1)
            other.publish("t", b"x", qos=1)
            other.collector.wait_one("t")
            other.close()
            text = metrics(b)
            assert metric(text, "starling_auth_backend_answers_total", backend="http", result="deny") >= 3
        finally:
            b.stop()
    finally:
        svc.stop()


def test_on_error_pass_falls_through_to_the_password_file(tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run([os.environ["STARLING_BIN"], "passwd", "-c", "-b", str(passwd), "bob", "pw"], check=True)
    b = start_broker(
        tmp_path,
        f"""
[auth.http]
url = "http://127.0.0.1:{free_port()}/auth"
timeout_ms = 500
on_error = "pass"
""",
        f'auth = ["http", "password_file"]\npassword_file = "{passwd}"\nallow_anonymous = false',
        extra_listener=False,
    )
    try:
        client(b, "bob", "pw").close()
        client(b, "bob", "nope", expect_rc=BAD_CREDENTIALS).close()
    finally:
        b.stop()


def test_introspected_tokens(tmp_path):
    idp = IntrospectionService(client_id="broker", client_secret="s3cret").start()
    try:
        idp.add_token("tok-alice", username="alice", scope="mqtt other")
        idp.add_token("tok-noscope", username="carol", scope="other")
        idp.add_token("tok-revoked", username="dave")
        idp.revoke("tok-revoked")
        idp.expire_tokens = False
        idp.add_token("tok-expired", username="erin", exp=int(time.time()) - 60)
        secret = tmp_path / "secret"
        secret.write_text("s3cret\n")
        # The broker uses the token's username: this ACL gives each user its own subtree.
        (tmp_path / "acl").write_text("pattern readwrite %u/#\n")
        b = start_broker(
            tmp_path,
            f"""
[auth.introspection]
url = "{idp.endpoint}"
client_id = "broker"
client_secret_file = "{secret}"
required_scope = "mqtt"
""",
            'auth = ["introspection"]\nallow_anonymous = false\nacl_file = "{workdir}/acl"',
            extra_listener=False,
        )
        try:
            alice = client(b, "ignored", "tok-alice")
            # The username the broker uses is the token's: the ACL grants alice/#.
            assert alice.subscribe("alice/#", qos=1) == [1]
            assert alice.subscribe("ignored/#", qos=1) == [NOT_AUTHORIZED]
            alice.close()
            # The answer was cached: connecting again does not ask.
            asked = idp.count()
            client(b, "ignored", "tok-alice").close()
            assert idp.count() == asked
            # A valid token without the scope: not authorized; a dead one: bad credentials.
            client(b, "x", "tok-noscope", expect_rc=NOT_AUTHORIZED).close()
            for token in ("tok-revoked", "tok-expired", "unknown"):
                client(b, "x", token, expect_rc=BAD_CREDENTIALS).close()
            form = idp.asked()[0].fields
            assert form.get("token") == "tok-alice"
        finally:
            b.stop()
    finally:
        idp.stop()


def test_http_answer_can_carry_an_acl_and_an_expiry(tmp_path):
    svc = AuthService().start()
    try:
        svc.add_user("dev", "pw", acl={"pub": ["devices/%c/up"], "sub": ["devices/%c/down"]},
                     expire_at=int(time.time()) + 3)
        b = start_broker(tmp_path, f'[auth.http]\nurl = "{svc.auth_url}"\n',
                         'auth = ["http"]\nallow_anonymous = false', extra_listener=False)
        try:
            c = client(b, "dev", "pw", client_id="d1")
            assert c.subscribe("devices/d1/down", qos=1) == [1]
            assert c.subscribe("devices/d2/down", qos=1) == [NOT_AUTHORIZED]
            c.publish("devices/d1/up", b"x", qos=1)
            c.publish("devices/d2/up", b"x", qos=1)
            codes = [rc.value for _m, rc, _p in c.publish_acks]
            assert NOT_AUTHORIZED in codes and codes.count(NOT_AUTHORIZED) == 1, codes
            d = c.wait_disconnected(timeout=10)
            assert d.rc == 0xA0, f"expired credentials: DISCONNECT {d.rc:#x}"
            c.close()
        finally:
            b.stop()
    finally:
        svc.stop()
