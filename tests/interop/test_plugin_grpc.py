"""Out-of-process plugins over gRPC: a Python (grpcio) plugin, ``grpc_plugin.py``, started by
each test as a process on a free 127.0.0.1 port, and a broker configured with a ``grpc``
plugin section pointing at it. The plugin refuses a client, rewrites a payload, drops a
message and refuses a filter, and records the notifications it is sent; a plugin that hangs
is given up after ``timeout_ms`` (fail open and fail closed) while other clients are served;
a plugin that crashes leaves the broker serving (``on_failure`` decides), and once it is
started again the broker reconnects to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BrokerProcess, free_port
from helpers import TIMEOUT, V5, V311, Client, unique_id, wait_for

pytestmark = pytest.mark.starling_only

PLUGIN = Path(__file__).with_name("grpc_plugin.py")
NOT_AUTHORIZED = 0x87
QUOTA_EXCEEDED = 0x97
UNSPECIFIED_ERROR = 0x80


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    """The Python stubs, generated once from the proto with grpc_tools.protoc."""
    d = tmp_path_factory.mktemp("grpc-stubs")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PLUGIN.parents[2] / 'proto'}",
         f"--python_out={d}", f"--grpc_python_out={d}",
         str(PLUGIN.parents[2] / "proto/starling/plugin/v1/plugin.proto")],
        check=True, timeout=60,
    )
    return d


class PluginProcess:
    """grpc_plugin.py on 127.0.0.1:`port`."""

    def __init__(self, stubs: Path, port: int, record: Path):
        self.stubs, self.port, self.record = stubs, port, record
        self.proc: subprocess.Popen | None = None

    def start(self, mode: str = "normal") -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [sys.executable, str(PLUGIN), "--port", str(self.port), "--stubs", str(self.stubs),
             "--record", str(self.record), "--mode", mode],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        ready = threading.Event()
        lines: list[str] = []

        def read(out):
            for line in out:
                lines.append(line)
                if line.startswith("ready"):
                    ready.set()

        threading.Thread(target=read, args=(self.proc.stdout,), daemon=True).start()
        if not ready.wait(20):
            self.stop()
            raise AssertionError(f"the plugin did not start: {''.join(lines)}")

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None

    def records(self) -> list[dict]:
        try:
            text = self.record.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out


@pytest.fixture
def plugin(stubs, tmp_path):
    p = PluginProcess(stubs, free_port(), tmp_path / "records.jsonl")
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def start_broker(tmp_path):
    made: list[BrokerProcess] = []

    def start(plugin: PluginProcess, **keys) -> BrokerProcess:
        settings = {
            "kind": '"grpc"',
            "endpoint": f'"http://127.0.0.1:{plugin.port}"',
            "timeout_ms": "1000",
            "reconnect_ms": "50",
            "max_reconnect_ms": "300",
        }
        settings.update(keys)
        section = "\n".join(f"{k} = {v}" for k, v in settings.items())
        b = BrokerProcess(tmp_path, f"[[plugin]]\n{section}\n")
        made.append(b)
        b.start()
        return b

    yield start
    for b in made:
        b.stop()
        # Shown by pytest only when the test failed.
        print(f"--- broker log ({b.log_path}) ---\n{b.log()}")


def connack_rc(b: BrokerProcess, client_id: str, version: int = V5) -> int:
    c = Client(b.address, client_id=client_id, version=version, connect=False)
    try:
        return c.connect(expect_rc=None).rc
    finally:
        c.close()


def wait_connected(b: BrokerProcess) -> None:
    """Until the broker's plugin refuses a banned client (it is connected to the plugin)."""
    wait_for(lambda: connack_rc(b, unique_id("banned")) == NOT_AUTHORIZED, timeout=10,
             interval=0.1, what="the broker to connect to the plugin")


def publish_rc(c: Client, topic: str, payload: bytes, timeout: float = TIMEOUT):
    """Publishes at QoS 1; returns a function waiting for the PUBACK's reason code."""
    info = c.c.publish(topic, payload, qos=1)

    def ack() -> int:
        def got():
            with c._lock:
                return next((rc for mid, rc, _p in c.publish_acks if mid == info.mid), None)
        return wait_for(got, timeout=timeout, what=f"PUBACK for {topic}").value

    return ack


def metric(b: BrokerProcess, name: str, plugin: str = "grpc") -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{b.http_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("plugin") == plugin:
                return s.value
    raise AssertionError(f"no sample {name}{{plugin={plugin!r}}}")


def test_the_plugin_refuses_rewrites_drops_and_records(plugin, start_broker):
    plugin.start()
    b = start_broker(plugin)
    wait_connected(b)
    # Failures before it was connected (the first probes) are not the plugin's answers.
    failures = metric(b, "starling_plugin_failures_total")
    # A refused client: CONNACK 0x87 for v5; return code 5 (not authorized) for 3.1.1,
    # which paho reports as 0x87 too.
    assert connack_rc(b, "banned-1") == NOT_AUTHORIZED
    assert connack_rc(b, "banned-2", V311) == NOT_AUTHORIZED
    assert connack_rc(b, "allowed-1", V311) == 0
    sub = Client(b.address, client_id="sub-1")
    pub = Client(b.address, client_id="pub-1")
    try:
        assert sub.subscribe("rewrite/#", 1) == [1]
        assert sub.subscribe("plain/#", 1) == [1]
        assert sub.subscribe("forbidden/x", 1) == [NOT_AUTHORIZED]

        # Rewritten: the payload upper-cased, a user property added.
        assert publish_rc(pub, "rewrite/a", b"hello")() == 0
        m = sub.collector.wait_one("rewrite/a")
        assert m.payload == b"HELLO"
        assert ("rewritten-by", "python") in m.prop("UserProperty", [])
        # Passed as it is.
        assert publish_rc(pub, "plain/a", b"same")() == 0
        assert sub.collector.wait_one("plain/a").payload == b"same"
        # Dropped with the plugin's reason code, and not delivered.
        assert publish_rc(pub, "drop/a", b"x")() == QUOTA_EXCEEDED
        # Taken: acknowledged as a success, not routed.
        assert publish_rc(pub, "take/a", b"x")() == 0

        # The deliveries (and their acknowledgements) reach the plugin's Notify stream.
        def delivered():
            r = [x for x in plugin.records() if x["event"] == "delivered"]
            return r if len(r) >= 2 else None

        got = wait_for(delivered, what="the recorded deliveries")
        assert {(x["client_id"], x["topic"], x["payload"]) for x in got} == {
            ("sub-1", "rewrite/a", "HELLO"),
            ("sub-1", "plain/a", "same"),
        }
        assert all(x["from"] == "pub-1" and x["qos"] == 1 for x in got)
        wait_for(lambda: sum(x["event"] == "acked" for x in plugin.records()) >= 2,
                 what="the recorded acknowledgements")
        wait_for(lambda: any(x["event"] == "dropped" and x["topic"] == "drop/a"
                             and x["reason"] == "hook" for x in plugin.records()),
                 what="the recorded drop")
        sub.collector.expect_none("drop/a", quiet=0.2)
    finally:
        sub.close()
        pub.close()
    wait_for(lambda: any(x["event"] == "disconnected" and x["client_id"] == "sub-1"
                         for x in plugin.records()), what="the recorded disconnection")
    assert any(x["event"] == "session" and x["client_id"] == "sub-1"
               and x["change"] == "session.created" for x in plugin.records())
    assert metric(b, "starling_plugin_failures_total") == failures


@pytest.mark.parametrize("on_failure", ["allow", "deny"])
def test_a_hung_plugin_is_given_up_after_its_timeout(plugin, start_broker, on_failure):
    plugin.start("hang")
    b = start_broker(plugin, on_failure=f'"{on_failure}"', timeout_ms="2000")
    wait_connected(b)
    sub = Client(b.address, client_id=unique_id("sub"))
    hung = Client(b.address, client_id=unique_id("hung"))
    other = Client(b.address, client_id=unique_id("other"))
    try:
        sub.subscribe("hang/#", 1)
        sub.subscribe("other/#", 1)
        t0 = time.monotonic()
        hung_ack = publish_rc(hung, "hang/x", b"late")
        # Another client is served meanwhile, well before the hung call's deadline.
        assert publish_rc(other, "other/y", b"now")() == 0
        assert sub.collector.wait_one("other/y").payload == b"now"
        assert time.monotonic() - t0 < 1.5
        rc = hung_ack()
        assert time.monotonic() - t0 >= 1.9, "answered before timeout_ms"
        if on_failure == "allow":
            assert rc == 0
            assert sub.collector.wait_one("hang/x").payload == b"late"
        else:
            assert rc == UNSPECIFIED_ERROR
            sub.collector.expect_none("hang/x", quiet=0.3)
    finally:
        for c in (sub, hung, other):
            c.close()
    assert metric(b, "starling_plugin_timeouts_total") >= 1


def test_a_crashed_plugin_is_reconnected_when_it_is_back(plugin, start_broker):
    # Only publishes go to the plugin: with it down, clients still connect and subscribe.
    plugin.start("crash")
    b = start_broker(plugin, on_failure='"deny"', events='["message.publish"]', timeout_ms="3000")
    sub = Client(b.address, client_id=unique_id("sub"))
    pub = Client(b.address, client_id=unique_id("pub"))
    try:
        sub.subscribe("rewrite/#", 1)
        # Refused (fail closed) until the plugin answers; its first call makes it exit.
        deadline = time.monotonic() + 10
        while plugin.proc is not None and plugin.proc.poll() is None:
            assert time.monotonic() < deadline, "the plugin was never called"
            assert publish_rc(pub, "rewrite/a", b"hello")() == UNSPECIFIED_ERROR
            time.sleep(0.05)
        assert plugin.wait_exit(5) == 3
        # The broker keeps serving without its plugin: on_failure decides at once.
        for _ in range(3):
            t0 = time.monotonic()
            assert publish_rc(pub, "rewrite/b", b"x")() == UNSPECIFIED_ERROR
            assert time.monotonic() - t0 < 2.0, "a missing plugin fails fast, not at timeout"
        late = Client(b.address, client_id=unique_id("late"))
        late.close()
        sub.collector.expect_none(quiet=0.2)
        assert metric(b, "starling_plugin_failures_total") >= 1

        # Started again (on the same port), it is reconnected to and used again.
        plugin.start("normal")

        def rewritten():
            if publish_rc(pub, "rewrite/c", b"back")() != 0:
                time.sleep(0.1)
                return False
            return True

        wait_for(rewritten, timeout=10, what="the broker to reconnect to the plugin")
        assert sub.collector.wait_one("rewrite/c").payload == b"BACK"
    finally:
        sub.close()
        pub.close()
