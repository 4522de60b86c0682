"""Bridges (``[[bridge]]``) against a real mosquitto started by the test: out, in and both
directions at QoS 0, 1 and 2 with prefixes, over MQTT 3.1.1 and 5; no echo on a two-way
bridge; and the faults: the remote stopped while 10,000 QoS 1 messages flow out, Starling
killed with -9 while its bridge queue holds messages, QoS 2 exactly once both ways across a
remote restart and a ``kill -9`` of Starling; stopping and starting a bridge through the admin
API. Messages are published and collected with paho-mqtt and mosquitto's tools.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import BrokerProcess, free_port, port_accepts
from helpers import unique_id
from test_import_mosquitto import tool

pytestmark = pytest.mark.starling_only

HOST = "127.0.0.1"


class Mosquitto:
    """A mosquitto broker on a fixed port, with persistence, that can be stopped and started."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        # max_inflight_messages: above any count of messages in flight to one client here.
        # Mosquitto 2.0.11 (Debian 12's) lets its outgoing inflight list grow past the limit
        # (each PUBCOMP moves up to a whole window from its queue), and when restoring a
        # persisted session it puts the entries beyond the limit back into the queue, whose
        # messages it then sends as new PUBLISHes: QoS 2 messages it had already released
        # (PUBREL sent) reach a subscriber a second time after a restart. Under that limit
        # every entry is restored in flight, and a released one is resumed with PUBREL.
        # (65535 would mean no limit, which restores everything into the queue.)
        lines = [f"listener {self.port} {HOST}", "allow_anonymous true", "persistence true",
                 f"persistence_location {workdir}/", "max_queued_messages 100000",
                 "max_inflight_messages 60000",
                 "log_dest file " + str(workdir / "mosquitto.log")]
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([tool("mosquitto"), "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_accepts(self.port):
            assert self.proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def remote(tmp_path):
    d = tmp_path / "remote"
    d.mkdir()
    m = Mosquitto(d)
    try:
        yield m
    finally:
        m.stop()


def bridge_config(remote_port: int, protocol: str, qos: int, extra: str = "") -> str:
    return f"""
[limits]
sys_interval_secs = 0

[[bridge]]
name = "cloud"
address = "{HOST}:{remote_port}"
protocol = "{protocol}"
client_id = "site-1"
reconnect_min_secs = 1
reconnect_max_secs = 2
{extra}

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = {qos}
remote_prefix = "site-1/"

[[bridge.topic]]
pattern = "cmd/#"
direction = "in"
qos = {qos}
local_prefix = "local/"
remote_prefix = "site-1/"

[[bridge.topic]]
pattern = "both/#"
direction = "both"
qos = {qos}
"""


def starling(tmp_path: Path, config: str) -> BrokerProcess:
    d = tmp_path / "starling"
    d.mkdir(exist_ok=True)
    b = BrokerProcess(d, config)
    b.start()
    return b


class Collector:
    """A paho client subscribed to a filter, keeping every message (topic, payload, qos)."""

    def __init__(self, port: int, topic: str, qos: int = 1, client_id: str | None = None,
                 clean: bool = True):
        self.messages: list[tuple[str, bytes, int]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or unique_id("col"),
                             clean_session=clean)
        self.subscribed = threading.Event()

        def on_connect(client, userdata, flags, rc, props=None):
            client.subscribe(topic, qos=qos)

        def on_subscribe(client, userdata, mid, rcs, props=None):
            self.subscribed.set()

        def on_message(client, userdata, msg):
            with self.lock:
                self.messages.append((msg.topic, msg.payload, msg.qos))

        self.c.on_connect = on_connect
        self.c.on_subscribe = on_subscribe
        self.c.on_message = on_message
        self.c.reconnect_delay_set(min_delay=1, max_delay=1)
        self.c.connect(HOST, port)
        self.c.loop_start()
        assert self.subscribed.wait(5), "no SUBACK"

    def wait_distinct(self, count: int, timeout: float) -> list[tuple[str, bytes, int]]:
        """Until `count` different payloads arrived (duplicates are kept in the answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len({m[1] for m in self.messages}) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)

    def wait_topic(self, topic: str, timeout: float = 10.0) -> list[tuple[str, bytes, int]]:
        """Until a message on `topic` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(m[0] == topic for m in self.messages):
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def publish(port: int, topic: str, payload: str, qos: int, *args: str) -> None:
    res = subprocess.run([tool("mosquitto_pub"), "-h", HOST, "-p", str(port), "-t", topic,
                          "-m", payload, "-q", str(qos), *args],
                         capture_output=True, timeout=15)
    assert res.returncode == 0, res


def wait_bridged(local_port: int, remote_port: int) -> None:
    """Until a probe published locally arrives at the remote (the bridge is up)."""
    probe = Collector(remote_port, "site-1/sensors/probe")
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            publish(local_port, "sensors/probe", "p", 0)
            if probe.wait(1, timeout=0.3):
                return
        raise AssertionError("the bridge did not come up")
    finally:
        probe.close()


def bridge_state(port: int, name: str = "cloud") -> bytes:
    """The retained `$SYS/broker/bridge/<name>/state`."""
    res = subprocess.run([tool("mosquitto_sub"), "-h", HOST, "-p", str(port), "-t",
                          f"$SYS/broker/bridge/{name}/state", "-C", "1", "-W", "3"],
                         capture_output=True, timeout=15)
    assert res.returncode == 0, res
    return res.stdout.strip()


def wait_state(port: int, want: bytes) -> None:
    deadline = time.monotonic() + 15
    got = b""
    while time.monotonic() < deadline:
        got = bridge_state(port)
        if got == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"bridge state {got!r}, expected {want!r}")


def check_visible(s: BrokerProcess) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{s.http_url}/metrics", timeout=5).read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.labels.get("bridge") == "cloud":
                samples[smp.name] = smp.value
    assert samples["starling_bridge_connected"] == 1, samples
    assert samples["starling_bridge_messages_out_total"] >= 1, samples
    assert samples["starling_bridge_messages_in_total"] >= 1, samples
    assert samples["starling_bridge_queued"] == 0, samples
    res = subprocess.run([os.environ["STARLING_BIN"], "ctl", "--url", s.http_url, "bridges"],
                         capture_output=True, timeout=15)
    assert res.returncode == 0, res
    row = res.stdout.decode().splitlines()[1].split()
    assert row[:2] == ["cloud", "true"], res.stdout
    assert bridge_state(s.port) == b"1"
    # Nobody from a listener may take the bridge's local session over.
    res = subprocess.run([tool("mosquitto_sub"), "-h", HOST, "-p", str(s.port), "-i", "$bridge/cloud",
                          "-t", "x", "-W", "2"], capture_output=True, timeout=15)
    assert res.returncode == 2 and b"identifier rejected" in res.stderr, res


@pytest.mark.parametrize("protocol", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_out_in_and_both_with_prefixes(tmp_path, remote, protocol, qos):
    s = starling(tmp_path, bridge_config(remote.port, protocol, qos))
    try:
        wait_bridged(s.port, remote.port)
        out = Collector(remote.port, "site-1/#", qos=2)
        inc = Collector(s.port, "local/#", qos=2)
        both_remote = Collector(remote.port, "both/#", qos=2)
        both_local = Collector(s.port, "both/#", qos=2)
        try:
            publish(s.port, "sensors/kitchen/temp", "21.5", 2)
            publish(remote.port, "site-1/cmd/reboot", "now", 2)
            publish(s.port, "both/from-local", "L", 2)
            publish(remote.port, "both/from-remote", "R", 2)
            # `site-1/#` also sees the command published at the remote, which may come first: a
            # QoS 2 message crossing the bridge reaches the remote's subscribers only after its
            # release has made the round trip through Starling's store.
            got_out = [m for m in out.wait_topic("site-1/sensors/kitchen/temp")
                       if m[0] == "site-1/sensors/kitchen/temp"]
            assert got_out == [("site-1/sensors/kitchen/temp", b"21.5", qos)], got_out
            assert inc.wait(1) == [("local/cmd/reboot", b"now", qos)]
            assert sorted(both_remote.wait(2)) == [("both/from-local", b"L", qos),
                                                   ("both/from-remote", b"R", 2)]
            assert sorted(both_local.wait(2)) == [("both/from-local", b"L", 2),
                                                  ("both/from-remote", b"R", qos)]
            # Nothing echoes back across the bridge: each arrived once on each side.
            time.sleep(1.0)
            assert len(both_local.messages) == 2 and len(both_remote.messages) == 2, (
                both_local.messages, both_remote.messages)
            # The bridge is visible: metrics (Prometheus' parser) and `starling ctl bridges`.
            if qos == 1 and protocol == "mqttv5":
                check_visible(s)
            # What matches no topic line does not cross.
            publish(s.port, "other/x", "no", 1)
            publish(remote.port, "site-1/nomatch/y", "no", 1)
            time.sleep(0.5)
            assert not [m for m in out.messages if m[0] == "site-1/other/x"], out.messages
            assert inc.messages == [("local/cmd/reboot", b"now", qos)], inc.messages
        finally:
            for c in (out, inc, both_remote, both_local):
                c.close()
    finally:
        s.stop()


def test_remote_stopped_while_10000_qos1_messages_flow_out(tmp_path, remote):
    s = starling(tmp_path, bridge_config(remote.port, "mqttv311", 1))
    try:
        wait_bridged(s.port, remote.port)
        col = Collector(remote.port, "site-1/sensors/flow", qos=1, client_id="flow-collector",
                        clean=False)
        lines = "".join(f"{i}\n" for i in range(10_000)).encode()
        pub = subprocess.Popen([os.environ["STARLING_BIN"], "pub", "-h", HOST, "-p", str(s.port),
                                "-t", "sensors/flow", "-l", "-q", "1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert pub.stdin is not None
        pub.stdin.write(lines)
        pub.stdin.close()
        # Stop the remote while messages flow, then bring it back.
        col.wait(500, timeout=20)
        remote.stop()
        # The bridge says it is down, then up again.
        wait_state(s.port, b"0")
        time.sleep(0.5)
        remote.start()
        wait_state(s.port, b"1")
        assert pub.wait(timeout=60) == 0, pub.stderr.read() if pub.stderr else ""
        # Distinct payloads: QoS 1 resends around the interruption arrive as duplicates, and
        # counting them would stop the wait before the last messages are in.
        got = col.wait_distinct(10_000, timeout=60)
        payloads = {int(m[1]) for m in got}
        missing = sorted(set(range(10_000)) - payloads)
        assert not missing, f"{len(missing)} lost, first {missing[:10]}"
        # QoS 1: duplicates are allowed, but only around the interruption.
        assert len(got) - 10_000 < 1000, len(got)
        col.close()
    finally:
        s.stop()


def test_starling_killed_with_queued_messages_sends_them_after_restart(tmp_path, remote):
    s = starling(tmp_path, bridge_config(remote.port, "mqttv5", 1))
    try:
        wait_bridged(s.port, remote.port)
        col = Collector(remote.port, "site-1/sensors/queued", qos=1, client_id="queued-collector",
                        clean=False)
        col.close()
        remote.stop()
        for i in range(300):
            publish(s.port, "sensors/queued", str(i), 1) if i % 100 == 0 else None
        # 300 messages in one go through starling pub -l: each acknowledged, so stored.
        res = subprocess.run([os.environ["STARLING_BIN"], "pub", "-h", HOST, "-p", str(s.port),
                              "-t", "sensors/queued", "-l", "-q", "1"],
                             input="".join(f"q{i}\n" for i in range(300)).encode(),
                             capture_output=True, timeout=30)
        assert res.returncode == 0, res
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=5)
        s.proc = None
        s.start(s.port)
        remote.start()
        col = Collector(remote.port, "site-1/sensors/queued", qos=1, client_id="queued-collector",
                        clean=False)
        got = col.wait_distinct(303, timeout=30)
        payloads = {m[1].decode() for m in got}
        expected = {f"q{i}" for i in range(300)} | {"0", "100", "200"}
        assert expected <= payloads, sorted(expected - payloads)[:10]
        col.close()
    finally:
        s.stop()


def test_two_starlings_bridged_both_ways_on_everything_make_no_loop(tmp_path):
    b = starling(tmp_path, "[limits]\nsys_interval_secs = 0\n")
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    a = BrokerProcess(a_dir, f"""
[limits]
sys_interval_secs = 0

[[bridge]]
name = "to-b"
address = "{HOST}:{b.port}"
reconnect_min_secs = 1
reconnect_max_secs = 1

[[bridge.topic]]
pattern = "#"
direction = "both"
qos = 1
""")
    a.start()
    try:
        col_a = Collector(a.port, "t/#")
        col_b = Collector(b.port, "t/#")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not col_b.wait(1, timeout=0.3):
            publish(a.port, "t/probe", "p", 1)
        assert col_b.messages, "the bridge did not come up"
        time.sleep(0.5)
        base_a, base_b = len(col_a.messages), len(col_b.messages)
        publish(a.port, "t/a", "from a", 1)
        publish(b.port, "t/b", "from b", 1)
        time.sleep(2.0)
        new_a = col_a.messages[base_a:]
        new_b = col_b.messages[base_b:]
        assert sorted(m[:2] for m in new_a) == [("t/a", b"from a"), ("t/b", b"from b")], new_a
        assert sorted(m[:2] for m in new_b) == [("t/a", b"from a"), ("t/b", b"from b")], new_b
        col_a.close()
        col_b.close()
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("direction", ["out", "in"])
def test_two_starlings_with_a_bridge_each_to_the_other_make_no_loop(tmp_path, direction):
    """A bridges to B and B bridges to A, with two separate bridges (each `out`, or each
    `in`): No Local cannot tell, the brokers' names in `starling-via` do. Each message
    arrives once on each side, and then nothing more crosses."""
    port_a = free_port()
    line = f'[[bridge.topic]]\npattern = "t/#"\ndirection = "{direction}"\nqos = 1\n'
    b = starling(tmp_path, f"""
[limits]
sys_interval_secs = 0

[[bridge]]
name = "to-a"
address = "{HOST}:{port_a}"
reconnect_min_secs = 1
reconnect_max_secs = 1

{line}""")
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    a = BrokerProcess(a_dir, f"""
[limits]
sys_interval_secs = 0

[[bridge]]
name = "to-b"
address = "{HOST}:{b.port}"
reconnect_min_secs = 1
reconnect_max_secs = 1

{line}""")
    a.start(port_a)
    try:
        col_a = Collector(a.port, "t/#")
        col_b = Collector(b.port, "t/#")
        # Both bridges up: a probe from each side reaches the other.
        for src, dst in ((a, col_b), (b, col_a)):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(m[0] == "t/probe" for m in dst.messages):
                publish(src.port, "t/probe", "p", 1)
                time.sleep(0.3)
            assert any(m[0] == "t/probe" for m in dst.messages), "a bridge did not come up"
        time.sleep(1.0)
        base_a, base_b = len(col_a.messages), len(col_b.messages)
        publish(a.port, "t/a", "from a", 1)
        publish(b.port, "t/b", "from b", 1)
        time.sleep(2.5)
        new_a = col_a.messages[base_a:]
        new_b = col_b.messages[base_b:]
        assert sorted(m[:2] for m in new_a) == [("t/a", b"from a"), ("t/b", b"from b")], new_a
        assert sorted(m[:2] for m in new_b) == [("t/a", b"from a"), ("t/b", b"from b")], new_b
        col_a.close()
        col_b.close()
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("version", ["mqttv311", "mqttv50"])
def test_mosquitto_bridges_into_starling(tmp_path, version):
    """mosquitto's own bridge (try_private on, its default) connected to Starling: messages
    cross both ways with its prefixes, once each (no echo)."""
    s = starling(tmp_path, "[limits]\nsys_interval_secs = 0\n")
    d = tmp_path / "mosq"
    d.mkdir()
    port = free_port()
    lines = [f"listener {port} {HOST}", "allow_anonymous true",
             "connection to-starling", f"address {HOST}:{s.port}",
             f"bridge_protocol_version {version}", "cleansession false",
             "restart_timeout 1", "topic data/# both 1 site/ hq/"]
    if os.geteuid() == 0:
        lines.append("user root")
    (d / "m.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([tool("mosquitto"), "-c", str(d / "m.conf")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_accepts(port):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        at_starling = Collector(s.port, "hq/data/#")
        at_mosquitto = Collector(port, "site/data/#")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not at_starling.wait(1, timeout=0.3):
            publish(port, "site/data/probe", "p", 1)
        assert at_starling.messages, "mosquitto's bridge did not come up"
        time.sleep(0.5)
        base_s, base_m = len(at_starling.messages), len(at_mosquitto.messages)
        publish(port, "site/data/up", "from mosquitto", 1)
        publish(s.port, "hq/data/down", "from starling", 1)
        time.sleep(1.5)
        new_s = sorted(m[:2] for m in at_starling.messages[base_s:])
        new_m = sorted(m[:2] for m in at_mosquitto.messages[base_m:])
        assert new_s == [("hq/data/down", b"from starling"), ("hq/data/up", b"from mosquitto")], new_s
        assert new_m == [("site/data/down", b"from starling"), ("site/data/up", b"from mosquitto")], new_m
        at_starling.close()
        at_mosquitto.close()
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        s.stop()


def test_tls_with_a_client_certificate(tmp_path):
    """The remote (a real mosquitto) requires TLS and a client certificate whose CN is the
    username; the bridge verifies the remote against the CA and presents its certificate."""
    from test_security import make_pki

    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    p = make_pki(pki_dir)
    d = tmp_path / "remote"
    d.mkdir()
    port = free_port()
    plain = free_port()
    (d / "acl").write_text("user device-7\ntopic readwrite site-1/#\n")
    lines = ["per_listener_settings true",
             f"listener {port} {HOST}", f"cafile {p['ca.pem']}", f"certfile {p['server.pem']}",
             f"keyfile {p['server.key']}", "require_certificate true", "use_identity_as_username true",
             f"acl_file {d / 'acl'}",
             f"listener {plain} {HOST}", "allow_anonymous true"]
    if os.geteuid() == 0:
        lines.append("user root")
    (d / "m.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([tool("mosquitto"), "-c", str(d / "m.conf")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (port_accepts(port) and port_accepts(plain)):
            assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.02)
        s = starling(tmp_path, f"""
[limits]
sys_interval_secs = 0

[[bridge]]
name = "secure"
address = "{HOST}:{port}"
protocol = "mqttv311"
tls = true
server_name = "localhost"
ca_file = "{p['ca.pem']}"
cert_file = "{p['device.pem']}"
key_file = "{p['device.key']}"
reconnect_min_secs = 1
reconnect_max_secs = 1

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = 1
remote_prefix = "site-1/"
""")
        try:
            col = Collector(plain, "site-1/#")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not col.wait(1, timeout=0.3):
                publish(s.port, "sensors/t", "over tls", 1)
            assert col.messages and col.messages[0][:2] == ("site-1/sensors/t", b"over tls"), col.messages
            col.close()
        finally:
            s.stop()
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def publish_lines(port: int, topic: str, payloads: list[str], qos: int) -> subprocess.Popen:
    """`starling pub -l`: one message per line, started in the background."""
    pub = subprocess.Popen([os.environ["STARLING_BIN"], "pub", "-h", HOST, "-p", str(port),
                            "-t", topic, "-l", "-q", str(qos)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert pub.stdin is not None
    pub.stdin.write("".join(f"{p}\n" for p in payloads).encode())
    pub.stdin.close()
    return pub


def exactly_once(got: list[tuple[str, bytes, int]], expected: list[str]) -> None:
    """Every expected payload arrived, and none twice."""
    counts = Counter(m[1].decode() for m in got)
    missing = [p for p in expected if counts[p] == 0]
    twice = sorted((p for p, n in counts.items() if n > 1), key=lambda p: int(p))
    assert not missing, f"{len(missing)} lost, first {missing[:10]}"
    assert not twice, f"{len(twice)} delivered more than once, first {twice[:10]}"


@pytest.mark.parametrize("protocol", ["mqttv311", "mqttv5"])
def test_qos2_out_exactly_once_while_the_remote_restarts(tmp_path, remote, protocol):
    """2,000 QoS 2 messages go out while mosquitto is stopped and started again mid-stream:
    each arrives once. The bridge uses the local broker's packet ids at the remote and chains
    the flows, so what it resends after the restart (PUBLISH with DUP, or PUBREL) reaches
    mosquitto's persistent session under the id it holds the message by."""
    s = starling(tmp_path, bridge_config(remote.port, protocol, 2))
    try:
        wait_bridged(s.port, remote.port)
        col = Collector(remote.port, "site-1/sensors/exact", qos=2, client_id="exact-out", clean=False)
        expected = [str(i) for i in range(2000)]
        pub = publish_lines(s.port, "sensors/exact", expected, 2)
        assert len({m[1] for m in col.wait(300, timeout=30)}) >= 300, "the stream did not start"
        remote.stop()
        wait_state(s.port, b"0")
        time.sleep(0.5)
        remote.start()
        wait_state(s.port, b"1")
        assert pub.wait(timeout=60) == 0, pub.stderr.read() if pub.stderr else ""
        col.wait_distinct(2000, timeout=60)
        # Anything resent late would come now.
        time.sleep(1.0)
        with col.lock:
            got = list(col.messages)
        col.close()
        exactly_once(got, expected)
        assert all(m[2] == 2 for m in got)
    finally:
        s.stop()


def test_qos2_in_exactly_once_while_starling_is_killed(tmp_path, remote):
    """2,000 QoS 2 messages published at mosquitto come in while Starling is killed with -9
    mid-stream and started again (durability `sync`): each reaches a persistent Starling
    subscriber once. The bridge uses mosquitto's packet ids towards the local broker, whose
    session stores an id awaiting PUBREL in the same commit as the message, and answers
    PUBREC only after that commit: what mosquitto resends after the crash is recognised."""
    # The subscriber's session must hold the whole burst (1,000 by default; beyond, the oldest
    # would be dropped, which is not what this test is about).
    config = bridge_config(remote.port, "mqttv5", 2).replace(
        "[limits]\n", "[limits]\nmax_queued_messages = 100000\n", 1)
    s = starling(tmp_path, config)
    try:
        wait_bridged(s.port, remote.port)
        col = Collector(s.port, "local/cmd/#", qos=2, client_id="exact-in", clean=False)
        expected = [str(i) for i in range(2000)]
        pub = publish_lines(remote.port, "site-1/cmd/exact", expected, 2)
        # Killed while the bridge is in the middle of the stream (the subscriber lags behind
        # it: what it has not read waits in its session).
        deadline = time.monotonic() + 30
        while bridge_counter(s, "messages_in") < 300:
            assert time.monotonic() < deadline, "the stream did not start"
            time.sleep(0.005)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=5)
        s.proc = None
        assert pub.wait(timeout=60) == 0, pub.stderr.read() if pub.stderr else ""
        s.start(s.port)
        col.wait_distinct(2000, timeout=90)
        # Anything resent late would come now.
        time.sleep(1.0)
        with col.lock:
            got = list(col.messages)
        col.close()
        exactly_once(got, expected)
    finally:
        s.stop()


def bridge_counter(s: BrokerProcess, name: str) -> int:
    """A counter of the bridge `cloud` from `GET /api/v1/bridges` (an open HTTP listener)."""
    with urllib.request.urlopen(f"{s.http_url}/api/v1/bridges", timeout=5) as r:
        items = json.loads(r.read())["items"]
    return next(b[name] for b in items if b["name"] == "cloud")


def api(s: BrokerProcess, method: str, path: str, key: str) -> tuple[int, dict]:
    """One admin API request with an API key: (status, JSON answer)."""
    req = urllib.request.Request(f"{s.http_url}/api/v1{path}", method=method,
                                 headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def bridge_row(s: BrokerProcess, key: str) -> dict:
    status, body = api(s, "GET", "/bridges", key)
    assert status == 200, body
    return next(b for b in body["items"] if b["name"] == "cloud")


def test_stop_and_start_a_bridge_through_the_api_and_ctl(tmp_path, remote):
    """Stopped (`starling ctl bridge stop`): disconnected, state 0, messages published locally
    wait in the bridge's session and none reaches the remote; started (the API): they all
    arrive. A viewer may not, and an unknown bridge is 404."""
    keys = tmp_path / "api-keys"
    admin, viewer = (subprocess.run(
        [os.environ["STARLING_BIN"], "apikey", "--file", str(keys), "create", name, "--role", role],
        check=True, capture_output=True, text=True, timeout=30).stdout.strip()
        for name, role in (("ops", "admin"), ("watch", "viewer")))
    config = bridge_config(remote.port, "mqttv5", 1) + f"""
[http]
open = false
api_keys_file = "{keys}"
"""
    s = starling(tmp_path, config)
    try:
        wait_bridged(s.port, remote.port)
        assert bridge_row(s, viewer)["enabled"] is True
        status, body = api(s, "POST", "/bridges/cloud/stop", viewer)
        assert status == 403 and body["code"] == "forbidden", body
        status, body = api(s, "POST", "/bridges/nope/stop", admin)
        assert status == 404 and body["code"] == "not_found", body
        assert bridge_row(s, viewer)["connected"] is True, "the refusals changed nothing"

        ctl = [os.environ["STARLING_BIN"], "ctl", "--url", s.http_url, "--api-key", admin]
        res = subprocess.run(ctl + ["bridge", "stop", "cloud"], capture_output=True, timeout=15)
        assert res.returncode == 0 and b"stopped bridge cloud" in res.stdout, res
        wait_state(s.port, b"0")
        row = bridge_row(s, viewer)
        assert (row["enabled"], row["state"], row["connected"]) == (False, "stopped", False), row

        col = Collector(remote.port, "site-1/sensors/#", qos=1)
        expected = [f"held-{i}" for i in range(200)]
        pub = publish_lines(s.port, "sensors/held", expected, 1)
        assert pub.wait(timeout=30) == 0, pub.stderr.read() if pub.stderr else ""
        time.sleep(1.5)
        assert not col.messages, col.messages[:5]
        row = bridge_row(s, viewer)
        assert row["pending"] + row["queued"] == 200, row
        assert bridge_state(s.port) == b"0"

        status, body = api(s, "POST", "/bridges/cloud/start", admin)
        assert status == 200 and body["enabled"] is True, body
        wait_state(s.port, b"1")
        got = col.wait(200, timeout=20)
        assert sorted(m[1].decode() for m in got) == sorted(expected)
        col.close()
        res = subprocess.run(ctl + ["bridges"], capture_output=True, timeout=15)
        assert res.returncode == 0, res
        assert res.stdout.decode().splitlines()[1].split()[:3] == ["cloud", "true", "connected"]
    finally:
        s.stop()
