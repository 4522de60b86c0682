"""Bridges (``[[bridge]]``) against a real mosquitto started by the test: out, in and both
directions at QoS 0, 1 and 2 with prefixes, over MQTT 3.1.1 and 5; no echo on a two-way
bridge; and the faults: the remote stopped while 10,000 QoS 1 messages flow out, and Starling
killed with -9 while its bridge queue holds messages. Messages are published and collected with
paho-mqtt and mosquitto's tools.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
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
        lines = [f"listener {self.port} {HOST}", "allow_anonymous true", "persistence true",
                 f"persistence_location {workdir}/", "max_queued_messages 100000",
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
            got_out = [m for m in out.wait(1) if m[0] != "site-1/sensors/probe"]
            assert got_out[:1] == [("site-1/sensors/kitchen/temp", b"21.5", qos)], got_out
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
        got = col.wait(10_000, timeout=60)
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
        got = col.wait(303, timeout=30)
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
