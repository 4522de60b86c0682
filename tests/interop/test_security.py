"""TLS, WebSocket, passwords and client certificates with clients nobody here wrote:
paho-mqtt over WebSocket (plain and secure), mosquitto_pub / mosquitto_sub over TLS with
--cafile, with and without a client certificate, and with a password.

Certificates are made at test time with the openssl command; the password file with
``starling passwd``. The broker runs from a config file with one listener of each kind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import free_port, port_accepts
from helpers import TIMEOUT, MosquittoSub, unique_id

pytestmark = pytest.mark.starling_only

HOST = "127.0.0.1"


def openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl not installed")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA; a server certificate for 127.0.0.1 and localhost; client certificates for
    device-7 (from the CA) and rogue (self-made CA)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=Starling interop {ca}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    for name, ca, subj, ext in (
        ("server", "ca", "/CN=localhost", "server.ext"),
        ("device", "ca", "/O=Starling interop/CN=device-7", "client.ext"),
        ("rogue", "rogue-ca", "/CN=device-7", "client.ext"),
    ):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=d)
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "device.pem", "device.key",
                                "rogue.pem", "rogue.key", "rogue-ca.pem")}


def starling_bin() -> str:
    b = os.environ.get("STARLING_BIN")
    if not b:
        pytest.fail("set STARLING_BIN to the starling binary")
    return b


class SecureBroker:
    """starling serve --config with listeners: tcp+password, tls+password, ws, wss, and
    tls requiring a client certificate whose CN is the username."""

    def __init__(self, d: Path):
        self.dir = d
        self.pki = make_pki(d)
        self.passwd = d / "passwd"
        subprocess.run([starling_bin(), "passwd", "-c", "-b", str(self.passwd), "alice", "wonderland"],
                       check=True, capture_output=True, timeout=60)
        (d / "acl").write_text(
            "user alice\ntopic readwrite #\n"
            "user device-7\ntopic readwrite devices/7/#\n"
            "pattern read anyone/%c/#\n")
        self.ports = {k: free_port() for k in ("tcp", "tls", "ws", "wss", "mtls")}
        p = self.pki
        tls = f'cert_file = "{p["server.pem"]}"\nkey_file = "{p["server.key"]}"\n'
        (d / "starling.toml").write_text(f"""
[[listener]]
bind = "{HOST}:{self.ports['tcp']}"
password_file = "{self.passwd}"
acl_file = "{d / 'acl'}"
allow_anonymous = false

[[listener]]
bind = "{HOST}:{self.ports['tls']}"
protocol = "tls"
{tls}password_file = "{self.passwd}"
allow_anonymous = false

[[listener]]
bind = "{HOST}:{self.ports['ws']}"
protocol = "ws"

[[listener]]
bind = "{HOST}:{self.ports['wss']}"
protocol = "wss"
path = "/mqtt"
{tls}
[[listener]]
bind = "{HOST}:{self.ports['mtls']}"
protocol = "tls"
{tls}ca_file = "{p['ca.pem']}"
require_certificate = true
use_identity_as_username = "cn"
acl_file = "{d / 'acl'}"
""")
        self.log_path = d / "broker.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [starling_bin(), "serve", "--config", str(d / "starling.toml"), "--data-dir", str(d / "data")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=d)
        log.close()
        deadline = time.monotonic() + 10
        while not all(port_accepts(port) for port in self.ports.values()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"broker did not start\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def secure(tmp_path, request):
    b = SecureBroker(tmp_path)
    try:
        yield b
    finally:
        b.stop()
        if getattr(getattr(request.node, "rep_call", None), "failed", False):
            print(f"\n--- broker log ---\n{b.log()}")


def cli(tool: str, port: int, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    exe = shutil.which(tool)
    assert exe, f"{tool} not found (run scripts/install-test-deps.sh)"
    return subprocess.run([exe, "-h", HOST, "-p", str(port), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


# --- mosquitto_pub / mosquitto_sub over TLS --------------------------------------------------

@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_pub_sub_over_tls_with_cafile(secure, version):
    ca = str(secure.pki["ca.pem"])
    topic = unique_id("tls")
    sub = MosquittoSub((HOST, secure.ports["tls"]), "--cafile", ca, "-u", "alice", "-P", "wonderland",
                       "-t", topic, "-q", "1", "-C", "1", "-V", version)
    try:
        sub.wait_subscribed()
        res = cli("mosquitto_pub", secure.ports["tls"], "--cafile", ca, "-u", "alice", "-P", "wonderland",
                  "-t", topic, "-q", "1", "-m", "over TLS", "-V", version)
        assert res.returncode == 0, res.stderr
        assert sub.wait_exit() == 0
        assert [m.payload for m in sub.messages()] == [b"over TLS"]
    finally:
        sub.close()


def test_mosquitto_pub_refuses_a_server_it_does_not_trust(secure):
    res = cli("mosquitto_pub", secure.ports["tls"], "--cafile", str(secure.pki["rogue-ca.pem"]),
              "-u", "alice", "-P", "wonderland", "-t", "x", "-m", "x")
    assert res.returncode != 0


@pytest.mark.parametrize("version,message", [
    ("mqttv311", "bad user name or password"),
    ("mqttv5", "bad user name or password"),
])
def test_mosquitto_pub_wrong_password(secure, version, message):
    for port in (secure.ports["tcp"], secure.ports["tls"]):
        extra = ["--cafile", str(secure.pki["ca.pem"])] if port == secure.ports["tls"] else []
        res = cli("mosquitto_pub", port, *extra, "-u", "alice", "-P", "wrong",
                  "-t", "x", "-m", "x", "-V", version)
        assert res.returncode != 0
        assert message in res.stderr.decode().lower(), res.stderr
        res = cli("mosquitto_pub", port, *extra, "-t", "x", "-m", "x", "-V", version)
        assert res.returncode != 0, "anonymous accepted"
        assert "not authori" in res.stderr.decode().lower(), res.stderr


def test_mosquitto_client_certificate_accepted_and_refused(secure):
    p = {k: str(v) for k, v in secure.pki.items()}
    port = secure.ports["mtls"]
    topic = "devices/7/status"
    sub = MosquittoSub((HOST, port), "--cafile", p["ca.pem"], "--cert", p["device.pem"], "--key", p["device.key"],
                       "-t", topic, "-q", "1", "-C", "1")
    try:
        sub.wait_subscribed()
        ok = cli("mosquitto_pub", port, "--cafile", p["ca.pem"], "--cert", p["device.pem"],
                 "--key", p["device.key"], "-t", topic, "-q", "1", "-m", "cert ok")
        assert ok.returncode == 0, ok.stderr
        assert sub.wait_exit() == 0
        assert [m.payload for m in sub.messages()] == [b"cert ok"]
    finally:
        sub.close()
    # The CN is the username: device-7 may not publish outside devices/7 (v5: PUBACK 0x87).
    res = cli("mosquitto_pub", port, "--cafile", p["ca.pem"], "--cert", p["device.pem"], "--key", p["device.key"],
              "-t", "devices/8/status", "-q", "1", "-m", "x", "-V", "mqttv5", "-d")
    assert "not authori" in (res.stdout + res.stderr).decode().lower(), res
    # No certificate, or one from another CA: the TLS handshake fails.
    for extra in ([], ["--cert", p["rogue.pem"], "--key", p["rogue.key"]]):
        res = cli("mosquitto_pub", port, "--cafile", p["ca.pem"], *extra, "-t", topic, "-q", "1", "-m", "x")
        assert res.returncode != 0, extra


# --- paho-mqtt over WebSocket ----------------------------------------------------------------

class WsClient:
    def __init__(self, port: int, version: int, *, tls_ca: Path | None = None, path: str = "/mqtt"):
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.got = threading.Condition()
        self.rc = None
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("ws"), protocol=version,
                             transport="websockets", reconnect_on_failure=False)
        self.c.ws_set_options(path=path)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=str(tls_ca))
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(HOST, port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK over WebSocket"
        assert self.rc == 0, self.rc

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.rc = reason_code.value
        self.connected.set()

    def _on_message(self, client, userdata, message):
        with self.got:
            self.messages.append((message.topic, bytes(message.payload)))
            self.got.notify_all()

    def wait_messages(self, n: int) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + TIMEOUT
        with self.got:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"got {self.messages}, expected {n} messages"
                self.got.wait(left)
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("secure_ws", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_websocket(secure, secure_ws, version):
    port = secure.ports["wss" if secure_ws else "ws"]
    ca = secure.pki["ca.pem"] if secure_ws else None
    topic = unique_id("ws") + "/t"
    sub = WsClient(port, version, tls_ca=ca)
    pub = WsClient(port, version, tls_ca=ca)
    try:
        sub.c.subscribe(topic, qos=1)
        assert sub.subscribed.wait(TIMEOUT)
        big = bytes(range(256)) * 300  # spans several WebSocket frames and reads
        pub.c.publish(topic, b"small", qos=1).wait_for_publish(TIMEOUT)
        pub.c.publish(topic, big, qos=1).wait_for_publish(TIMEOUT)
        got = sub.wait_messages(2)
        assert got == [(topic, b"small"), (topic, big)]
    finally:
        sub.close()
        pub.close()


def test_websocket_wrong_path_is_refused(secure):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("ws"), transport="websockets",
                    reconnect_on_failure=False)
    c.ws_set_options(path="/not-mqtt")
    with pytest.raises(Exception):
        c.connect(HOST, secure.ports["ws"], keepalive=30)
        # paho raises on the failed handshake in connect() or in the first loop call
        for _ in range(50):
            rc = c.loop(timeout=0.1)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(rc)
    c.loop_stop()


# --- password files shared with mosquitto ----------------------------------------------------

def test_mosquitto_reads_a_file_written_by_starling_passwd(tmp_path):
    """`starling passwd -H sha512-pbkdf2` writes what mosquitto 2.0 reads (argon2id, the
    default, needs mosquitto 2.1)."""
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosq).exists():
        pytest.skip("mosquitto not installed")
    pw = tmp_path / "passwd"
    subprocess.run([starling_bin(), "passwd", "-c", "-H", "sha512-pbkdf2", "-b", str(pw), "carol", "c4rol"],
                   check=True, capture_output=True, timeout=30)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} {HOST}", "allow_anonymous false", f"password_file {pw}",
             "persistence false", "log_dest stderr"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([mosq, "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_accepts(port):
            assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        ok = cli("mosquitto_pub", port, "-u", "carol", "-P", "c4rol", "-t", "x", "-m", "x")
        assert ok.returncode == 0, ok.stderr
        bad = cli("mosquitto_pub", port, "-u", "carol", "-P", "wrong", "-t", "x", "-m", "x")
        assert bad.returncode != 0
    finally:
        proc.terminate()
        proc.wait(timeout=5)
