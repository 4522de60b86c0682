"""The PROXY protocol with Debian's HAProxy in front of Starling, started by the test:
``send-proxy`` (v1), ``send-proxy-v2``, ``send-proxy-v2-ssl`` and ``send-proxy-v2-ssl-cn`` with
TLS ended at HAProxy and a client certificate whose CN becomes the username. paho-mqtt
clients connect from their own loopback addresses (127.0.0.2, 127.0.0.3) and the broker sees
each with its own address and port (admin API, log), and banning one address keeps that
client out and not the other.

Then raw sockets straight to the broker: a malformed, an oversize and a slow header, a plain
CONNECT where a header is required, a v2 header where v1 is, a header from an untrusted
address, and one on a listener that expects none are each closed and counted in
``starling_proxy_protocol_rejected_total{reason}``; a v2 LOCAL header (a health check) is
served as a connection from the proxy itself; everyone else is served throughout.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import BrokerProcess, free_port, port_accepts
from helpers import unique_id
from test_security import make_pki

pytestmark = pytest.mark.starling_only

HOST = "127.0.0.1"
TIMEOUT = 10.0
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def haproxy_bin() -> str:
    exe = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if exe is None:
        pytest.skip("haproxy not installed (scripts/install-test-deps.sh installs it)")
    return exe


class Setup:
    """Starling with a plain listener and four PROXY listeners, HAProxy in front of three."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        pki = tmp_path / "pki"
        pki.mkdir()
        self.pki = make_pki(pki)
        # HAProxy wants the certificate and its key in one file.
        self.haproxy_pem = pki / "haproxy.pem"
        self.haproxy_pem.write_text(self.pki["server.pem"].read_text() + self.pki["server.key"].read_text())
        self.b = {k: free_port() for k in ("v1", "v2", "cn", "any", "tls", "ws")}
        self.h = {k: free_port() for k in ("v1", "v2", "ssl", "cn", "tls", "ws")}
        trusted = 'proxy_protocol_trusted = ["127.0.0.1/32"]'
        config = f"""
[[listener]]
bind = "127.0.0.1:1883"

[[listener]]
bind = "127.0.0.1:{self.b['v1']}"
proxy_protocol = "v1"
{trusted}

[[listener]]
bind = "127.0.0.1:{self.b['v2']}"
proxy_protocol = "v2"
{trusted}

[[listener]]
bind = "127.0.0.1:{self.b['cn']}"
proxy_protocol = "v2"
{trusted}
use_identity_as_username = "cn"

[[listener]]
bind = "127.0.0.1:{self.b['any']}"
proxy_protocol = "any"
{trusted}
proxy_protocol_timeout_ms = 500

[[listener]]
bind = "127.0.0.1:{self.b['tls']}"
protocol = "tls"
cert_file = "{self.pki['server.pem']}"
key_file = "{self.pki['server.key']}"
proxy_protocol = "v2"
{trusted}

[[listener]]
bind = "127.0.0.1:{self.b['ws']}"
protocol = "ws"
proxy_protocol = "v1"
{trusted}
"""
        d = tmp_path / "starling"
        d.mkdir()
        self.broker = BrokerProcess(d, config)
        self.broker.start()
        # The start-up check waits for the first listener; the others are bound after it.
        wait(lambda: all(port_accepts(p) for p in self.b.values()), "the PROXY listeners")
        self.haproxy = None
        try:
            self.start_haproxy()
        except BaseException:
            self.broker.stop()
            raise

    def start_haproxy(self) -> None:
        ca = self.pki["ca.pem"]
        b, h = self.b, self.h
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(f"""
global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend v1
    bind 127.0.0.1:{h['v1']}
    default_backend v1
backend v1
    server starling 127.0.0.1:{b['v1']} send-proxy

frontend v2
    bind 127.0.0.1:{h['v2']}
    default_backend v2
backend v2
    server starling 127.0.0.1:{b['v2']} send-proxy-v2

frontend ssl
    bind 127.0.0.1:{h['ssl']} ssl crt {self.haproxy_pem} ca-file {ca} verify required
    default_backend ssl
backend ssl
    server starling 127.0.0.1:{b['v2']} send-proxy-v2-ssl

frontend cn
    bind 127.0.0.1:{h['cn']} ssl crt {self.haproxy_pem} ca-file {ca} verify optional
    default_backend cn
backend cn
    server starling 127.0.0.1:{b['cn']} send-proxy-v2-ssl-cn

frontend tls
    bind 127.0.0.1:{h['tls']}
    default_backend tls
backend tls
    server starling 127.0.0.1:{b['tls']} send-proxy-v2

frontend ws
    bind 127.0.0.1:{h['ws']}
    default_backend ws
backend ws
    server starling 127.0.0.1:{b['ws']} send-proxy
""")
        self.haproxy_log = open(self.dir / "haproxy.log", "wb")
        self.haproxy = subprocess.Popen([haproxy_bin(), "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                        stdout=self.haproxy_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while not all(port_accepts(p) for p in h.values()):
            if self.haproxy.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("haproxy did not start:\n" + (self.dir / "haproxy.log").read_text())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(timeout=5)
            self.haproxy_log.close()
        self.broker.stop()

    # --- the admin API and metrics ---
    def api(self, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        req = urllib.request.Request(self.broker.http_url + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, None

    def client_view(self, client_id: str) -> dict:
        status, body = self.api("/api/v1/clients/" + client_id)
        assert status == 200, f"admin API: {status} for {client_id}"
        return body

    def rejected(self) -> dict[str, float]:
        with urllib.request.urlopen(self.broker.http_url + "/metrics", timeout=TIMEOUT) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("starling_proxy_protocol_rejected_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = float(line.rsplit(" ", 1)[1])
        assert out, "no starling_proxy_protocol_rejected_total in /metrics"
        return out


@pytest.fixture
def setup(tmp_path, request):
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        s.stop()
        if getattr(getattr(request.node, "rep_call", None), "failed", False):
            print(f"\n--- broker log ---\n{s.broker.log()}")
            print(f"\n--- haproxy log ---\n{(tmp_path / 'haproxy.log').read_text(errors='replace')}")


class Mqtt:
    """A paho-mqtt 5 client from a chosen source address, optionally over TLS."""

    def __init__(self, port: int, *, bind: str = "", tls: dict | None = None, client_id: str | None = None,
                 host: str = HOST, transport: str = "tcp"):
        self.client_id = client_id or unique_id("pp")
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             transport=transport, reconnect_on_failure=False)
        self.connack = threading.Event()
        self.gone = threading.Event()
        self.rc = None
        self.messages: list[bytes] = []
        self.subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.gone.set()
        self.c.on_message = lambda c, u, m: self.messages.append(m.payload)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        if tls is not None:
            self.c.tls_set(**tls)
        self.c.connect(host, port, keepalive=30, bind_address=bind)
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        self.rc = rc.value
        self.connack.set()

    def wait_connack(self) -> int:
        assert self.connack.wait(TIMEOUT), f"no CONNACK for {self.client_id}"
        return self.rc

    def local_address(self) -> str:
        sock = self.c.socket()
        # paho wraps a WebSocket's socket.
        sock = getattr(sock, "_socket", sock)
        host, port = sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait(pred, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_haproxy_forwards_each_client_address(setup):
    """send-proxy, send-proxy-v2 and send-proxy-v2-ssl: two clients from 127.0.0.2 and
    127.0.0.3 through each; the admin API shows each with its own address and source port,
    the log line of its connection too."""
    tls = {"ca_certs": str(setup.pki["ca.pem"]), "certfile": str(setup.pki["device.pem"]),
           "keyfile": str(setup.pki["device.key"])}
    seen = []
    for front, extra in (("v1", {}), ("v2", {}), ("ssl", {"tls": tls})):
        for source in ("127.0.0.2", "127.0.0.3"):
            c = Mqtt(setup.h[front], bind=source, **extra)
            try:
                assert c.wait_connack() == 0
                view = setup.client_view(c.client_id)
                # The address HAProxy saw: this client's own socket address, port included.
                assert view["address"] == c.local_address(), (front, view)
                assert view["address"].startswith(source + ":")
                seen.append((c.client_id, view["address"]))
            finally:
                c.close()
    log = setup.broker.log()
    for client_id, address in seen:
        assert any(client_id in line and f"peer={address}" in line for line in log.splitlines()), (
            f"no log line for {client_id} from {address}")


def test_haproxy_in_front_of_tls_and_websocket_listeners(setup):
    """TLS passed through HAProxy (send-proxy-v2) to a tls listener, which reads the header
    before its own handshake; WebSocket through HAProxy (send-proxy) to a ws listener."""
    tls = Mqtt(setup.h["tls"], bind="127.0.0.2", tls={"ca_certs": str(setup.pki["ca.pem"])})
    try:
        assert tls.wait_connack() == 0
        assert setup.client_view(tls.client_id)["address"] == tls.local_address()
    finally:
        tls.close()
    ws = Mqtt(setup.h["ws"], bind="127.0.0.3", transport="websockets")
    try:
        assert ws.wait_connack() == 0
        assert setup.client_view(ws.client_id)["address"] == ws.local_address()
    finally:
        ws.close()


def test_haproxy_ssl_cn_becomes_the_username(setup):
    """send-proxy-v2-ssl-cn with a verified client certificate: its CN is the username; a
    client without a certificate (HAProxy verifies optionally) is refused by the broker."""
    tls = {"ca_certs": str(setup.pki["ca.pem"]), "certfile": str(setup.pki["device.pem"]),
           "keyfile": str(setup.pki["device.key"])}
    c = Mqtt(setup.h["cn"], bind="127.0.0.2", tls=tls)
    try:
        assert c.wait_connack() == 0
        view = setup.client_view(c.client_id)
        assert view["username"] == "device-7"
        assert view["address"] == c.local_address()
    finally:
        c.close()
    anon = Mqtt(setup.h["cn"], bind="127.0.0.3", tls={"ca_certs": str(setup.pki["ca.pem"])})
    try:
        assert anon.wait_connack() == 0x87  # Not authorized: no certificate identity
    finally:
        anon.close()


def test_ban_of_one_forwarded_address_spares_the_other(setup):
    """Two clients through send-proxy-v2 from 127.0.0.2 and 127.0.0.3; banning 127.0.0.2
    (admin API) disconnects that client and refuses it again, while 127.0.0.3 stays connected,
    gets messages and can connect anew."""
    a = Mqtt(setup.h["v2"], bind="127.0.0.2")
    b = Mqtt(setup.h["v2"], bind="127.0.0.3")
    try:
        assert a.wait_connack() == 0 and b.wait_connack() == 0
        b.c.subscribe("pp/ban", qos=1)
        assert b.subscribed.wait(TIMEOUT)
        status, _ = setup.api("/api/v1/banned", {"kind": "address", "value": "127.0.0.2", "reason": "test"})
        assert status == 201
        assert a.gone.wait(TIMEOUT), "the banned client stayed connected"
        again = Mqtt(setup.h["v2"], bind="127.0.0.2")
        try:
            # HAProxy accepted it, the broker closes it after the header: no CONNACK.
            assert again.gone.wait(TIMEOUT) and again.rc is None
        finally:
            again.close()
        other = Mqtt(setup.h["v2"], bind="127.0.0.3")
        try:
            assert other.wait_connack() == 0
            other.c.publish("pp/ban", b"still here", qos=1).wait_for_publish(TIMEOUT)
        finally:
            other.close()
        wait(lambda: b"still here" in b.messages, "the message to the client not banned")
        assert not b.gone.is_set()
        assert f"peer=127.0.0.2" in setup.broker.log()
        assert "address banned by an operator" in setup.broker.log()
    finally:
        a.close()
        b.close()


# --- raw sockets straight to the broker ------------------------------------------------------

CONNECT = bytes([0x10, 15, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 3]) + b"raw"
CONNACK_OK = bytes([0x20, 2, 0, 0])


def v2_header(cmd: int, fam: int, addrs: bytes, tlvs: bytes = b"") -> bytes:
    body = addrs + tlvs
    return V2_SIGNATURE + bytes([0x20 | cmd, fam]) + struct.pack(">H", len(body)) + body


def closed_by_broker(s: socket.socket, timeout: float = TIMEOUT) -> bool:
    """True when the broker closes the socket (EOF or reset) within `timeout`, having sent
    nothing but possibly an MQTT error."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(256)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def raw(port: int, source: str = HOST) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect((HOST, port))
    return s


def test_bad_headers_are_closed_and_counted(setup):
    b = setup.b
    before = setup.rejected()
    cases = [
        # (reason, listener, what is sent)
        ("malformed", "any", b"PROXY TCP4 1.2.3.4 nonsense 1 2\r\n" + CONNECT),
        ("malformed", "v2", v2_header(1, 0x41, b"\x00" * 12)),  # unknown family
        ("oversize", "any", b"PROXY UNKNOWN " + b"x" * 200),
        ("oversize", "v2", V2_SIGNATURE + bytes([0x21, 0x11, 0xff, 0xff])),
        ("missing", "v2", CONNECT),
        ("wrong_version", "v1", v2_header(1, 0x11, bytes([127, 0, 0, 9, 127, 0, 0, 1, 0, 1, 7, 91]))),
        ("timeout", "any", b"PROXY TCP4 127.0.0.9 "),
    ]
    for reason, listener, data in cases:
        s = raw(b[listener])
        try:
            s.sendall(data)
            started = time.monotonic()
            assert closed_by_broker(s), f"{reason} on {listener}: not closed"
            if reason == "timeout":
                assert time.monotonic() - started >= 0.3, "closed before the header timeout"
        finally:
            s.close()
    # Untrusted: from 127.0.0.5, a perfectly good header.
    s = raw(b["v1"], source="127.0.0.5")
    try:
        s.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 5000 1883\r\n" + CONNECT)
        assert closed_by_broker(s), "untrusted: not closed"
    finally:
        s.close()
    # A header on the plain listener, which expects none.
    s = raw(setup.broker.port)
    try:
        s.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 5000 1883\r\n" + CONNECT)
        assert closed_by_broker(s), "unexpected header: not closed"
    finally:
        s.close()
    expected = {"malformed": 2, "oversize": 2, "missing": 1, "wrong_version": 1, "timeout": 1,
                "untrusted": 1, "unexpected": 1}
    after = wait(lambda: (lambda r: r if all(r[k] - before[k] >= n for k, n in expected.items()) else None)(
        setup.rejected()), "the rejections to be counted")
    for k, n in expected.items():
        assert after[k] - before[k] == n, (k, before, after)
    log = setup.broker.log()
    for reason in expected:
        assert re.search(rf"reason={reason}\b", log), f"no log line with reason={reason}"

    # Everyone else is served: a plain client, a client through HAProxy, and a raw v1 header.
    c = Mqtt(setup.broker.port)
    p = Mqtt(setup.h["v1"], bind="127.0.0.3")
    try:
        assert c.wait_connack() == 0 and p.wait_connack() == 0
    finally:
        c.close()
        p.close()
    s = raw(b["any"])
    try:
        s.sendall(b"PROXY TCP4 192.0.2.10 127.0.0.1 4242 1883\r\n" + CONNECT)
        s.settimeout(TIMEOUT)
        assert s.recv(4) == CONNACK_OK
        view = setup.client_view("raw")
        assert view["address"] == "192.0.2.10:4242"
    finally:
        s.close()


def test_v2_local_is_the_proxys_own_connection(setup):
    """A v2 LOCAL header (what a proxy's health check sends): served, with the socket's own
    peer address, even though the header holds other addresses."""
    s = raw(setup.b["v2"])
    try:
        local = v2_header(0, 0x11, bytes([192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2]))
        s.sendall(local + CONNECT)
        s.settimeout(TIMEOUT)
        assert s.recv(4) == CONNACK_OK
        view = setup.client_view("raw")
        host, port = s.getsockname()
        assert view["address"] == f"{host}:{port}"
    finally:
        s.close()


def test_websocket_forwarded_headers_from_a_trusted_proxy(tmp_path):
    """A ws listener trusting 127.0.0.1: its X-Forwarded-For / Forwarded set the client's
    address; the same header from 127.0.0.2, not trusted, is ignored."""
    ws_port = free_port()
    b = BrokerProcess(tmp_path, f"""
[[listener]]
bind = "127.0.0.1:1883"

[[listener]]
bind = "127.0.0.1:{ws_port}"
protocol = "ws"
proxy_protocol_trusted = ["127.0.0.1"]
""")
    b.start()
    try:
        wait(lambda: port_accepts(ws_port), "the WebSocket listener")

        def ws_view(bind: str, headers: dict) -> tuple[str, dict]:
            """Connects over WebSocket from `bind` with `headers`: (its own address, the
            admin API's view of it)."""
            c = Mqtt.__new__(Mqtt)
            c.client_id = unique_id("ws")
            c.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=mqtt.MQTTv5,
                              transport="websockets", reconnect_on_failure=False)
            c.c.ws_set_options(path="/mqtt", headers=headers)
            c.connack, c.gone, c.rc = threading.Event(), threading.Event(), None
            c.c.on_connect = c._on_connect
            c.c.connect(HOST, ws_port, keepalive=30, bind_address=bind)
            c.c.loop_start()
            try:
                assert c.wait_connack() == 0
                with urllib.request.urlopen(b.http_url + "/api/v1/clients/" + c.client_id, timeout=TIMEOUT) as r:
                    return c.local_address(), json.loads(r.read())
            finally:
                c.close()

        _, view = ws_view("127.0.0.1", {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
        assert view["address"] == "203.0.113.7:0", view
        _, view = ws_view("127.0.0.1", {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'})
        assert view["address"] == "[2001:db8::7]:0", view
        own, view = ws_view("127.0.0.2", {"X-Forwarded-For": "203.0.113.7"})
        assert view["address"] == own and own.startswith("127.0.0.2:"), view
    finally:
        b.stop()
