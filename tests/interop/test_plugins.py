"""The built-in plugins with paho-mqtt clients: topic rewrite, auto-subscribe, delayed
publish (through a ``kill -9``), and webhooks against HTTP servers started by each test (a
live one checking the HMAC signature, a dead one and a slow one, which must not hold up the
publish path).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import BrokerProcess, free_port
from helpers import V5, V311, Client, unique_id, wait_for

pytestmark = pytest.mark.starling_only

TOPIC_NAME_INVALID = 0x90


def start(tmp_path, plugins: str) -> BrokerProcess:
    b = BrokerProcess(tmp_path, f'[[listener]]\nbind = "127.0.0.1:1883"\n{plugins}\n')
    b.start()
    return b


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


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every POSTed body (with its headers), and can
    answer late (`delay`, seconds)."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server name)
                length = min(int(self.headers.get("content-length", "0")), 1 << 22)
                body = self.rfile.read(length)
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict]:
        with self.lock:
            return [e for _, body in self.posts for e in json.loads(body)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_topic_rewrite_of_publishes_and_subscriptions(tmp_path):
    b = start(
        tmp_path,
        """
[[plugin]]
kind = "topic_rewrite"
[[plugin.rule]]
action = "publish"
source = "old/+/temp"
dest = "new/$1/temp"
[[plugin.rule]]
action = "subscribe"
source = "legacy/#"
dest = "modern/$1"
""",
    )
    try:
        sub = Client(b.address, unique_id("sub"))
        sub.subscribe("new/#", 1)
        legacy = Client(b.address, unique_id("legacy"), V311)
        legacy.subscribe("legacy/+/x", 1)
        pub = Client(b.address, unique_id("pub"))
        pub.publish("old/kitchen/temp", b"21", qos=1)
        m = sub.collector.wait_one()
        assert (m.topic, m.payload) == ("new/kitchen/temp", b"21")
        pub.publish("modern/a/x", b"m", qos=1)
        m = legacy.collector.wait_one()
        assert m.topic == "modern/a/x", "the subscription was rewritten to modern/+/x"
        # Unsubscribing the filter as the client knows it removes the rewritten one.
        legacy.unsubscribe("legacy/+/x")
        legacy.collector.clear()
        pub.publish("modern/a/x", b"m2", qos=1)
        legacy.collector.expect_none()
        for c in (sub, legacy, pub):
            c.close()
    finally:
        b.stop()


def test_auto_subscribe_on_connect(tmp_path):
    b = start(
        tmp_path,
        """
[[plugin]]
kind = "auto_subscribe"
[[plugin.topic]]
filter = "cmd/%c"
qos = 1
""",
    )
    try:
        dev = Client(b.address, "dev-7", V311)
        pub = Client(b.address, unique_id("pub"))
        pub.publish("cmd/dev-7", b"reboot", qos=1)
        pub.publish("cmd/other", b"not for dev-7", qos=1)
        m = dev.collector.wait_one()
        assert (m.topic, m.payload, m.qos) == ("cmd/dev-7", b"reboot", 1)
        dev.collector.expect_none(topic="cmd/other")
        dev.close()
        pub.close()
    finally:
        b.stop()


def test_delayed_publish_is_durable_through_kill_9(tmp_path):
    b = start(tmp_path, '[[plugin]]\nkind = "delayed"\nmax_delay_secs = 60\n')
    try:
        pub = Client(b.address, unique_id("pub"))
        sub = Client(b.address, unique_id("sub"))
        sub.subscribe("later/#", 1)
        sent = time.monotonic()
        pub.publish("$delayed/2/later/soon", b"soon", qos=1)
        pub.publish("$delayed/4/later/after-crash", b"kept", qos=1)
        # Refused: not a number, too long, a $ target.
        for bad in ("$delayed/x/later/a", "$delayed/61/later/a", "$delayed/1/$SYS/a"):
            pub.publish(bad, b"bad", qos=1)
            assert pub.publish_acks[-1][1].value == TOPIC_NAME_INVALID, bad
        m = sub.collector.wait_one(timeout=10)
        assert (m.topic, m.payload) == ("later/soon", b"soon")
        assert time.monotonic() - sent >= 1.9, "not before its delay"
        pub.close()
        sub.close()
        # Killed while the second waits; it comes after the restart.
        assert b.proc is not None
        b.proc.kill()
        b.proc.wait(5)
        b.proc = None
        b.start(b.port)
        sub = Client(b.address, unique_id("sub"))
        sub.subscribe("later/#", 1)
        m = sub.collector.wait_one(timeout=15)
        assert (m.topic, m.payload) == ("later/after-crash", b"kept")
        sub.collector.clear()
        sub.collector.expect_none()
        sub.close()
    finally:
        b.stop()


def test_webhook_posts_signed_events(tmp_path):
    rx = Receiver()
    b = start(
        tmp_path,
        f"""
[[plugin]]
kind = "webhook"
url = "{rx.url}"
events = ["client.connect", "message.publish", "message.delivered", "message.acked", "client.disconnected", "session"]
topics = ["hooked/#"]
secret = "s3cret"
payload = true
batch_ms = 20
""",
    )
    try:
        sub = Client(b.address, "wh-sub")
        sub.subscribe("hooked/#", 1)
        pub = Client(b.address, "wh-pub")
        pub.publish("hooked/a", b"hello", qos=1)
        pub.publish("other/a", b"not sent", qos=1)
        sub.collector.wait_one()
        pub.disconnect()

        def seen():
            names = [(e["event"], e.get("client_id")) for e in rx.events()]
            want = [
                ("client.connect", "wh-pub"),
                ("message.publish", "wh-pub"),
                ("message.delivered", "wh-sub"),
                ("message.acked", "wh-sub"),
                ("client.disconnected", "wh-pub"),
                ("session", "wh-sub"),
            ]
            return all(w in names for w in want)

        wait_for(seen, timeout=10, what="the webhook events")
        events = rx.events()
        published = [e for e in events if e["event"] == "message.publish"]
        assert [e["topic"] for e in published] == ["hooked/a"], "only the configured topics"
        assert base64.b64decode(published[0]["payload"]) == b"hello"
        assert published[0]["qos"] == 1
        for headers, body in rx.posts:
            want = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
            assert headers["x-starling-signature"] == f"sha256={want}"
        text = metrics(b)
        assert metric(text, "starling_webhook_events_sent_total", plugin="webhook") >= 6
        sub.close()
    finally:
        b.stop()
        rx.close()


def test_dead_and_slow_webhooks_do_not_hold_up_the_publish_path(tmp_path):
    slow = Receiver(delay=3.0)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    b = start(
        tmp_path,
        f"""
[[plugin]]
kind = "webhook"
name = "dead"
url = "{dead}"
events = ["message.publish"]
retries = 1
backoff_ms = 50
timeout_ms = 500
[[plugin]]
kind = "webhook"
name = "slow"
url = "{slow.url}"
events = ["message.publish"]
queue_size = 10
batch_size = 5
timeout_ms = 10000
""",
    )
    try:
        sub = Client(b.address, unique_id("sub"))
        sub.subscribe("load/#", 1)
        pub = Client(b.address, unique_id("pub"))
        started = time.monotonic()
        for i in range(200):
            pub.publish(f"load/{i}", b"x", qos=1, timeout=5)
        assert time.monotonic() - started < 20, "publishes were held up by the webhooks"
        sub.collector.wait(200, timeout=10)

        def counted():
            text = metrics(b)
            return (
                metric(text, "starling_webhook_posts_failed_total", plugin="dead") >= 1
                and metric(text, "starling_webhook_events_dropped_total", plugin="slow") >= 1
            )

        wait_for(counted, timeout=10, what="the dead target's failures and the slow one's drops")
        text = metrics(b)
        assert metric(text, "starling_webhook_events_queued_total", plugin="slow") == 200
        assert metric(text, "starling_plugin_failures_total", plugin="dead") >= 1
        sub.close()
        pub.close()
    finally:
        b.stop()
        slow.close()
