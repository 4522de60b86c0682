"""``starling pub``, ``starling sub`` and ``starling rr`` beside mosquitto's own tools.

Each test runs the same flags through Starling's command and through mosquitto_pub,
mosquitto_sub or mosquitto_rr (Debian's 2.0.11), against a Starling broker and against a real
mosquitto broker, and compares what comes out byte for byte: stdout, exit status, and the
first line of stderr. Time fields (%j's "tst", %I, %U) are masked, as they differ between
two runs anyway. TLS, client certificates, passwords and WebSocket use the listeners of
test_security's broker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from conftest import free_port
from helpers import MosquittoSub, unique_id
from test_import_mosquitto import Process, tool
from test_security import HOST, secure  # noqa: F401  (the fixture)

pytestmark = pytest.mark.starling_only


def starling_bin() -> str:
    b = os.environ.get("STARLING_BIN")
    if not b:
        pytest.fail("set STARLING_BIN to the starling binary")
    return b


@pytest.fixture(params=["starling", "mosquitto"])
def port(request, tmp_path) -> int:
    """A broker of either kind on 127.0.0.1, anonymous clients allowed."""
    p = free_port()
    if request.param == "starling":
        cmd = [starling_bin(), "serve", "--bind", f"{HOST}:{p}", "--http-bind", f"{HOST}:0",
               "--data-dir", str(tmp_path / "data")]
    else:
        conf = tmp_path / "mosquitto.conf"
        lines = [f"listener {p} {HOST}", "allow_anonymous true", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        cmd = [tool("mosquitto"), "-c", str(conf)]
    proc = Process(request.param, cmd, p, tmp_path)
    try:
        yield p
    finally:
        proc.stop()


TOOLS = {"pub": "mosquitto_pub", "sub": "mosquitto_sub", "rr": "mosquitto_rr"}


def run(kind: str, which: str, port: int | None, *args: str, stdin: bytes | None = None,
        timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Runs `starling KIND` (which="starling") or mosquitto's tool for KIND."""
    if which == "starling":
        cmd = [starling_bin(), kind]
    else:
        cmd = [tool(TOOLS[kind])]
    if port is not None:
        cmd += ["-h", HOST, "-p", str(port)]
    return subprocess.run(cmd + list(args), input=stdin if stdin is not None else b"",
                          capture_output=True, timeout=timeout)


TIME_FIELDS = [
    (re.compile(rb'"tst":(\t?)"[0-9T:.Z+-]+"'), rb'"tst":\1"TIME"'),
    (re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"), b"ISOTIME"),
    (re.compile(rb"\d{10}\.\d{9}"), b"UNIXTIME"),
]


def masked(out: bytes) -> bytes:
    for pattern, repl in TIME_FIELDS:
        out = pattern.sub(repl, out)
    return out


def first_line(b: bytes) -> bytes:
    """The first non-empty line (mosquitto starts some usage errors with a newline)."""
    return next((line for line in b.split(b"\n") if line), b"")


def both(kind: str, port: int | None, *args: str, stdin: bytes | None = None):
    """The same command through both tools: (starling, mosquitto) results."""
    return (run(kind, "starling", port, *args, stdin=stdin),
            run(kind, "mosquitto", port, *args, stdin=stdin))


def assert_same(ours: subprocess.CompletedProcess, theirs: subprocess.CompletedProcess):
    assert (ours.returncode, masked(ours.stdout), first_line(ours.stderr)) == (
        theirs.returncode, masked(theirs.stdout), first_line(theirs.stderr)), (
        f"starling: {ours}\nmosquitto: {theirs}")


def retain(port: int, topic: str, *args: str) -> None:
    res = run("pub", "mosquitto", port, "-t", topic, "-r", "-q", "1", *args)
    assert res.returncode == 0, res


# --- sub: output formats -----------------------------------------------------------------

FORMATS = [
    [],
    ["-v"],
    ["-N"],
    ["-v", "-N"],
    ["-F", "%t|%p|%q|%r|%l|%x|%X"],
    ["-F", "[%10t][%-10t][%.3t][%05l][%-5l][%8p][%-8p][%06x]"],
    ["-F", r"\t%%@@\\%t\e\a\v\0!"],
    ["-F", "%j"],
    ["-F", "%J"],
    ["-F", "%j", "--pretty"],
    ["-F", "%J", "--pretty"],
    ["-F", "%I %U @Y-@m-@d @H @@ @j @a @b @Z @z"],
    ["-q", "1", "-F", "%q %m %r"],
]


@pytest.mark.parametrize("flags", FORMATS, ids=lambda f: " ".join(f) or "plain")
def test_sub_formats_match_mosquitto_sub(port, flags):
    topic = unique_id("fmt")
    payload = '{"n": 1, "s": "a\\"b", "l": [true, null, 2.50]}'
    retain(port, topic, "-m", payload)
    ours, theirs = both("sub", port, "-t", topic, "-C", "1", "-W", "5", *flags)
    assert ours.returncode == 0, ours
    assert_same(ours, theirs)


def test_sub_binary_and_empty_payloads_match(port, tmp_path):
    base = unique_id("bin")
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)))
    retain(port, f"{base}/blob", "-f", str(blob))
    retain(port, f"{base}/text", "-m", "x y")
    for flags in ([], ["-v"], ["-F", "%t %l %x"]):
        runs = []
        for which in ("starling", "mosquitto"):
            res = run("sub", which, port, "-t", f"{base}/#", "-C", "2", "-W", "5", *flags)
            assert res.returncode == 0, res
            runs.append(sorted(res.stdout.split(b"\n")) if flags else res.stdout)
        if not flags:
            # Two raw payloads, one of them binary with a newline inside: compare as a set.
            assert sorted(runs[0].split(b"x y\n")) == sorted(runs[1].split(b"x y\n"))
        else:
            assert runs[0] == runs[1]
    # An empty payload (not retained: a retained empty one clears the topic).
    for flags in ([], ["-v"], ["-F", "[%p][%l]"]):
        results = []
        for which in ("starling", "mosquitto"):
            sub = Background("sub", which, port, "-t", f"{base}/empty", "-C", "1", "-W", "5", *flags)
            sub.wait_subscribed()
            assert run("pub", "mosquitto", port, "-t", f"{base}/empty", "-n").returncode == 0
            results.append(sub.finish())
        assert_same(*results)


def test_sub_v5_properties_match(port):
    topic = unique_id("props")
    retain(port, topic, "-V", "5", "-m", "body",
           "-D", "publish", "content-type", "text/plain",
           "-D", "publish", "response-topic", "reply/here",
           "-D", "publish", "correlation-data", "c0rr",
           "-D", "publish", "payload-format-indicator", "1",
           "-D", "publish", "user-property", "k1", "v1",
           "-D", "publish", "user-property", "k2", "v2")
    for fmt in ("%C|%D|%F|%P|%R|%S|%A|%E", "%j", "%J"):
        flags = ["-V", "5", "-t", topic, "-C", "1", "-W", "5", "-F", fmt,
                 "-D", "subscribe", "subscription-identifier", "42"]
        if fmt == "%J":
            continue  # the payload is not JSON: both print an error, checked below
        ours, theirs = both("sub", port, *flags)
        assert ours.returncode == 0 and b"text/plain" in ours.stdout, ours
        if fmt == "%j":
            # The properties are listed in a fixed order, mosquitto_sub lists them in the
            # order of the packet, which is the broker's choice: compare them as objects.
            assert json.loads(masked(ours.stdout)) == json.loads(masked(theirs.stdout))
            assert ours.returncode == theirs.returncode
        else:
            assert_same(ours, theirs)
    ours, theirs = both("sub", port, "-t", topic, "-C", "1", "-W", "5", "-F", "%J")
    assert first_line(ours.stderr) == first_line(theirs.stderr) == (
        f"Error: Message payload is not valid JSON on topic {topic}.".encode())


# --- sub: stopping, filtering, exit codes ---------------------------------------------------

def test_sub_stops_and_exits_like_mosquitto_sub(port):
    base = unique_id("stop")
    retain(port, f"{base}/a", "-m", "1")
    retain(port, f"{base}/b", "-m", "2")
    retain(port, f"{base}/c/x", "-m", "3")
    cases = [
        # Timed out: 27 and "Timed out".
        ["-t", f"{base}/none", "-W", "1"],
        # -E: exit once subscribed, printing nothing.
        ["-t", f"{base}/#", "-E"],
        # -R: retained messages are not printed; then the timeout.
        ["-t", f"{base}/#", "-R", "-W", "1"],
        # -T: filtered out.
        ["-t", f"{base}/#", "-T", f"{base}/c/#", "-T", f"{base}/a", "-v", "-C", "1", "-W", "3"],
        # --retained-only stops at the timeout when only retained messages come.
        ["-t", f"{base}/b", "--retained-only", "-W", "1"],
        # Usage errors: status 1.
        ["-t", f"{base}/#", "-R", "--retained-only"],
        ["-W", "1"],
        ["-t", "a/#/b"],
        ["-t", "x", "-F", "%c"],
        ["-t", "x", "-q", "3"],
    ]
    for flags in cases:
        ours, theirs = both("sub", port, *flags)
        if ours.returncode == 1 and theirs.returncode == 1:
            # Usage errors: the same status and first line (the usage hint names the tool).
            # (Out-of-range values are reported in the parser's words.)
            assert first_line(ours.stderr) == first_line(theirs.stderr) or flags[-2:] == ["-q", "3"], (
                flags, ours.stderr, theirs.stderr)
            continue
        assert_same(ours, theirs)


def test_sub_remove_retained_clears_what_it_received(port):
    for which in ("starling", "mosquitto"):
        base = unique_id("rm")
        retain(port, f"{base}/a", "-m", "1")
        retain(port, f"{base}/b", "-m", "2")
        res = run("sub", which, port, "-t", f"{base}/#", "--remove-retained", "-T", f"{base}/b",
                  "-v", "-W", "2")
        # The clearing message comes back as a live message with an empty payload.
        assert res.returncode == 27 and res.stdout == f"{base}/a 1\n{base}/a (null)\n".encode(), res
        left = run("sub", "mosquitto", port, "-t", f"{base}/#", "-v", "-W", "1")
        assert left.stdout == f"{base}/b 2\n".encode(), (which, left)


def test_connection_refused_matches(tmp_path):
    closed = free_port()
    for kind, flags in (("sub", ["-t", "x"]), ("pub", ["-t", "x", "-m", "y"])):
        ours, theirs = both(kind, closed, *flags)
        assert ours.returncode == theirs.returncode == 1
        assert first_line(ours.stderr) == first_line(theirs.stderr) == b"Error: Connection refused"


# --- pub ---------------------------------------------------------------------------------------

class FormatSub(MosquittoSub):
    FORMAT = "MSG|%t|%q|%r|%l|%x"


class Background:
    """A client command running in the background, whose subscription can be waited for
    (it runs with -d, whose debug lines are dropped from the output compared)."""

    def __init__(self, kind: str, which: str, port: int, *args: str):
        cmd = [starling_bin(), kind] if which == "starling" else [tool(TOOLS[kind])]
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            # mosquitto's tools write to a pipe in blocks otherwise.
            cmd = [stdbuf, "-oL", *cmd]
        self.proc = subprocess.Popen(cmd + ["-h", HOST, "-p", str(port), "-d", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out = b""

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if b"received SUBACK" in line:
                return
        raise AssertionError("no SUBACK seen")

    def finish(self, timeout: float = 10.0) -> subprocess.CompletedProcess:
        out, err = self.proc.communicate(timeout=timeout)
        out = b"".join(l for l in out.splitlines(keepends=True)
                       if not l.startswith(b"Client ") and not l.startswith(b"Subscribed ("))
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)


PUB_CASES = [
    ["-m", "hello"],
    ["-m", "hello", "-q", "1"],
    ["-m", "hello", "-q", "2"],
    ["-n"],
    ["-m", "again", "--repeat", "3", "--repeat-delay", "0.1"],
    ["-s"],
    ["-l"],
    ["-f", "FILE"],
    ["-m", "v5", "-V", "5", "-q", "1", "-D", "publish", "user-property", "a", "b",
     "-D", "publish", "content-type", "c/t"],
]


@pytest.mark.parametrize("flags", PUB_CASES, ids=lambda f: " ".join(f))
def test_pub_is_received_as_mosquitto_pubs(port, flags, tmp_path):
    f = tmp_path / "payload.bin"
    f.write_bytes(b"\x00file\xffcontents\n")
    flags = [str(f) if a == "FILE" else a for a in flags]
    stdin = b"line one\n\nline three\n" if "-l" in flags or "-s" in flags else None
    outputs = []
    for which in ("starling", "mosquitto"):
        topic = unique_id("pub")
        sub = FormatSub((HOST, port), "-V", "5", "-q", "2", "-t", topic,
                        "-F", "MSG|%t|%q|%r|%l|%x|%C|%P")
        try:
            sub.wait_subscribed()
            res = run("pub", which, port, "-t", topic, *flags, stdin=stdin)
            assert res.returncode == 0, res
            expected = 3 if ("-l" in flags or "--repeat" in flags) else 1
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = [l.replace(topic, "TOPIC") for l in sub.lines if l.startswith("MSG|")]
                if len(got) >= expected:
                    break
                time.sleep(0.02)
            outputs.append(got)
        finally:
            sub.proc.terminate()
            sub.proc.wait(timeout=5)
    assert outputs[0] == outputs[1] and outputs[0], outputs


def test_pub_retained_and_will(port):
    topic = unique_id("ret")
    for which in ("starling", "mosquitto"):
        res = run("pub", which, port, "-t", f"{topic}/{which}", "-r", "-m", "kept", "-q", "1")
        assert res.returncode == 0, res
    res = run("sub", "mosquitto", port, "-t", f"{topic}/#", "-v", "-C", "2", "-W", "5")
    assert sorted(res.stdout.splitlines()) == [f"{topic}/mosquitto kept".encode(),
                                              f"{topic}/starling kept".encode()]
    # A will set with --will-* is published when the subscriber is killed.
    will = unique_id("will")
    watcher = FormatSub((HOST, port), "-t", will)
    try:
        watcher.wait_subscribed()
        victim = subprocess.Popen([starling_bin(), "sub", "-h", HOST, "-p", str(port), "-t", "x",
                                   "--will-topic", will, "--will-payload", "gone", "-k", "5"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        victim.kill()
        victim.wait(timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(l.startswith("MSG|") for l in watcher.lines):
            time.sleep(0.05)
        assert any(l.startswith(f"MSG|{will}|0|0|4|") for l in watcher.lines), watcher.lines
    finally:
        watcher.proc.terminate()
        watcher.proc.wait(timeout=5)


def test_pub_usage_errors_match(port):
    for flags in (["-t", "a"], ["-t", "a/#", "-m", "x"], ["-t", "a", "-m", "x", "-n"],
                  ["-m", "x"]):
        ours, theirs = both("pub", port, *flags)
        assert ours.returncode == theirs.returncode == 1, (flags, ours, theirs)
        assert first_line(ours.stderr) == first_line(theirs.stderr), (flags, ours.stderr, theirs.stderr)


# --- rr ----------------------------------------------------------------------------------------

def responder(port: int, request_topic: str) -> mqtt.Client:
    """A paho MQTT 5 client answering each request on its response topic with "re:" and the
    request's payload, echoing its correlation data."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("resp"), protocol=mqtt.MQTTv5)

    def on_message(client, userdata, msg):
        props = Properties(PacketTypes.PUBLISH)
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr is not None:
            props.CorrelationData = corr
        client.publish(msg.properties.ResponseTopic, b"re:" + msg.payload, qos=1, properties=props)

    c.on_message = on_message
    c.connect(HOST, port)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not c.is_connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    res, _ = c.subscribe(request_topic, qos=1)
    assert res == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.3)
    return c


def test_rr_matches_mosquitto_rr(port):
    req = unique_id("req")
    r = responder(port, req)
    try:
        for flags in (["-m", "ping"], ["-m", "ping", "-q", "1", "-v"],
                      ["-m", "ping", "-D", "publish", "correlation-data", "id-7", "-F", "%t|%p|%D"]):
            ours, theirs = both("rr", port, "-t", req, "-e", f"{req}/reply", "-W", "5", *flags)
            assert ours.returncode == 0 and b"re:ping" in ours.stdout, ours
            assert_same(ours, theirs)
    finally:
        r.loop_stop()
        r.disconnect()
    # Nobody answers: "Timed out", 27.
    ours, theirs = both("rr", port, "-t", unique_id("none"), "-e", "nobody/home", "-m", "x", "-W", "1")
    assert ours.returncode == 27
    assert_same(ours, theirs)


# --- credentials, TLS, client certificates, WebSocket ---------------------------------------

@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_refused_credentials_give_the_same_status(secure, version):  # noqa: F811
    port = secure.ports["tcp"]
    for creds in (["-u", "alice", "-P", "wrong"], []):
        ours, theirs = both("sub", port, "-V", version, "-t", "x", *creds)
        assert ours.returncode == theirs.returncode != 0, (ours, theirs)
        assert first_line(ours.stderr) == first_line(theirs.stderr)
        assert first_line(ours.stderr).startswith(b"Connection error: ")


def test_tls_client_certificates_and_websocket(secure):  # noqa: F811
    p = secure.pki
    topic = unique_id("tls")
    watcher = FormatSub((HOST, secure.ports["tcp"]), "-u", "alice", "-P", "wonderland", "-t", f"{topic}/#")
    try:
        watcher.wait_subscribed()
        ok = [
            ["-p", str(secure.ports["tls"]), "--cafile", str(p["ca.pem"]), "-u", "alice", "-P", "wonderland"],
            ["-L", f"mqtts://alice:wonderland@localhost:{secure.ports['tls']}/{topic}/url",
             "--cafile", str(p["ca.pem"])],
            ["-p", str(secure.ports["tls"]), "--capath", str(p["ca.pem"].parent), "-u", "alice",
             "-P", "wonderland"],
            ["-L", f"ws://{HOST}:{secure.ports['ws']}/mqtt"],
            ["-L", f"wss://localhost:{secure.ports['wss']}/mqtt", "--cafile", str(p["ca.pem"])],
        ]
        for i, flags in enumerate(ok):
            t = [] if any("mqtts://" in a for a in flags) else ["-t", f"{topic}/{i}"]
            res = subprocess.run([starling_bin(), "pub", "-h", HOST, *flags, *t, "-m", f"m{i}", "-q", "1"],
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
            assert res.returncode == 0, (flags, res)
        # Client certificate: the CN is the username; the ACL allows devices/7/#.
        res = subprocess.run([starling_bin(), "pub", "-h", HOST, "-p", str(secure.ports["mtls"]),
                              "--cafile", str(p["ca.pem"]), "--cert", str(p["device.pem"]),
                              "--key", str(p["device.key"]), "-t", "devices/7/x", "-m", "c", "-q", "1"],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
        assert res.returncode == 0, res
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = sorted(l for l in watcher.lines if l.startswith("MSG|"))
            if len(got) >= 5:
                break
            time.sleep(0.05)
        # Messages over ws/wss come from anonymous clients, which the tcp listener's ACL
        # lets alice read: every message arrives.
        topics = sorted(l.split("|")[1] for l in watcher.lines if l.startswith("MSG|"))
        assert topics == sorted([f"{topic}/0", f"{topic}/url", f"{topic}/2", f"{topic}/3", f"{topic}/4"]), watcher.lines
    finally:
        watcher.proc.terminate()
        watcher.proc.wait(timeout=5)
    # A broker certificate from another CA is refused: status 1, a TLS error.
    res = subprocess.run([starling_bin(), "pub", "-h", HOST, "-p", str(secure.ports["tls"]),
                          "--cafile", str(p["rogue-ca.pem"]), "-u", "alice", "-P", "wonderland",
                          "-t", "x", "-m", "y"], stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
    assert res.returncode == 1 and b"TLS" in res.stderr, res
    # The same with --insecure still verifies the chain (only the name is not checked).
    res = subprocess.run([starling_bin(), "pub", "-h", HOST, "-p", str(secure.ports["tls"]),
                          "--cafile", str(p["rogue-ca.pem"]), "--insecure", "-u", "alice",
                          "-P", "wonderland", "-t", "x", "-m", "y"],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
    assert res.returncode == 1, res
