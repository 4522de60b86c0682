"""Unix domain socket listeners (``protocol = "unix"``): paho-mqtt's ``transport="unix"``
and mosquitto's clients (``--unix``) talk to TCP clients through one; the socket file gets
its ``mode``, a stale one left behind is replaced at start while a regular file is not, and
the file is gone after shutdown. The connecting process's uid shows in the log lines
(``peer=unix:uid=N``) and reaches an HTTP authentication service (``unix_uid``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import BrokerProcess
from helpers import TIMEOUT, Client, unique_id

pytestmark = pytest.mark.starling_only


def unix_config(sock: Path, extra: str = "") -> str:
    return f"""
[[listener]]
bind = "127.0.0.1:1883"

[[listener]]
protocol = "unix"
path = "{sock}"
mode = "0660"
{extra}
"""


def wait_listening(sock: Path) -> None:
    """Until the broker accepts on `sock` (it binds its listeners in order, this one after the
    TCP listener the start-up check waits for)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(sock))
                return
            except OSError:
                assert time.monotonic() < deadline, f"nothing listens on {sock}"
                time.sleep(0.02)


def unix_client(sock: Path, client_id: str) -> tuple[mqtt.Client, threading.Event, list]:
    wait_listening(sock)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                    transport="unix", reconnect_on_failure=False)
    connected = threading.Event()
    got: list[bytes] = []
    subscribed = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.on_message = lambda cl, u, m: got.append(m.payload)
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(str(sock), keepalive=30)
    c.loop_start()
    assert connected.wait(TIMEOUT), "no CONNACK over the Unix socket"
    c.subscribed = subscribed  # type: ignore[attr-defined]
    return c, connected, got


def test_unix_socket_clients_talk_to_tcp_clients(tmp_path):
    sock = tmp_path / "mqtt.sock"
    b = BrokerProcess(tmp_path, unix_config(sock))
    b.start()
    try:
        wait_listening(sock)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        u, _, got = unix_client(sock, unique_id("ux"))
        try:
            u.subscribe("ux/#", qos=1)
            assert u.subscribed.wait(TIMEOUT)  # type: ignore[attr-defined]
            t = Client(b.address)
            t.subscribe("ux/#", qos=1)
            u.publish("ux/from-unix", b"over the socket", qos=1).wait_for_publish(TIMEOUT)
            t.publish("ux/from-tcp", b"over tcp", qos=1)
            assert t.collector.wait_one("ux/from-unix").payload == b"over the socket"
            deadline = threading.Event()
            for _ in range(200):
                if b"over tcp" in got:
                    break
                deadline.wait(0.05)
            assert b"over tcp" in got
            t.close()
        finally:
            u.disconnect()
            u.loop_stop()
        # mosquitto's own client over the socket.
        if shutil.which("mosquitto_pub"):
            r = subprocess.run(["mosquitto_pub", "--unix", str(sock), "-t", "ux/m", "-m", "hi", "-q", "1"],
                               capture_output=True, timeout=TIMEOUT)
            assert r.returncode == 0, r.stderr
        assert f"peer=unix:uid={os.getuid()}" in b.log()
    finally:
        b.stop()
    assert not sock.exists(), "the socket file is left after shutdown"


def test_stale_socket_is_replaced_and_other_files_are_not(tmp_path):
    sock = tmp_path / "mqtt.sock"
    # A socket file nobody listens on: what a killed broker leaves.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()
    assert sock.exists()
    b = BrokerProcess(tmp_path, unix_config(sock))
    b.start()
    try:
        c, _, _ = unix_client(sock, unique_id("ux"))
        c.disconnect()
        c.loop_stop()
    finally:
        b.stop()
    # A regular file at the path: the broker does not start, and the file is kept.
    sock.write_text("not a socket")
    conf = tmp_path / "only-unix.toml"
    conf.write_text(f'[http]\nenabled = false\n\n[[listener]]\nprotocol = "unix"\npath = "{sock}"\n')
    r = subprocess.run([os.environ["STARLING_BIN"], "serve", "--config", str(conf), "--data-dir",
                        str(tmp_path / "data2")], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "exists and is not a socket" in r.stdout + r.stderr, r.stdout + r.stderr
    assert sock.read_text() == "not a socket"


def test_the_uid_reaches_an_http_authentication_service(tmp_path):
    """A Unix socket listener whose clients an HTTP service authenticates: the service is
    told the connecting process's uid (`unix_uid`) and no address, and decides on it; the
    admin API lists the listener with its socket file."""
    from auth_services import AuthService

    sock = tmp_path / "mqtt.sock"
    with AuthService() as svc:
        def by_uid(req):
            ok = req.fields.get("unix_uid") == os.getuid() and "ip" not in req.fields
            return svc._verdict("allow" if ok else "deny")

        svc.auth_answer = by_uid
        b = BrokerProcess(tmp_path, unix_config(
            sock, 'auth = ["http"]\nallow_anonymous = false') + f"""
[auth.http]
url = "{svc.auth_url}"
cache_ttl_secs = 0
""")
        b.start()
        try:
            c, _, _ = unix_client(sock, unique_id("ux"))
            c.disconnect()
            c.loop_stop()
            [req] = svc.asked("/auth")
            assert req.fields["unix_uid"] == os.getuid()
            assert req.fields["listener"] == f"unix {sock}"
            with urllib.request.urlopen(b.http_url + "/api/v1/listeners", timeout=TIMEOUT) as r:
                listeners = json.loads(r.read())["items"]
            assert any(item["protocol"] == "unix" and item["address"] == str(sock)
                       for item in listeners), listeners
        finally:
            b.stop()
