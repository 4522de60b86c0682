"""More MQTT 5 features with paho-mqtt 2.x: outbound topic aliases, flow control (Receive
Maximum both ways), Maximum Packet Size both ways, Response Information, server redirection,
reason strings and Request Problem Information, subscription identifiers on overlapping
subscriptions, and enhanced authentication.

paho-mqtt has no support for AUTH packets: it can name an Authentication Method in CONNECT
(and so hear 0x8C for one the broker does not know) but cannot answer a challenge. The
SCRAM-SHA-256 exchanges are therefore made over a raw socket by a client written here from
RFC 5802 with Python's hashlib, independent of the broker's implementation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import subprocess
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from conftest import BrokerProcess, reference_broker
from helpers import QUIET, TIMEOUT, V5, V311, props, publish_props, refused_publish, unique_id, wait_for


def connect_props(**values):
    return props(PacketTypes.CONNECT, **values)


# --- topic aliases --------------------------------------------------------------------------


def resolve_aliases(msgs):
    """(topic, alias, payload) as received, and the topics they stand for, resolving aliases
    as a client must (an alias is defined by a message carrying both)."""
    aliases = {}
    out = []
    for m in msgs:
        alias = m.prop("TopicAlias")
        topic = m.topic
        if alias is not None:
            if topic:
                aliases[alias] = topic
            else:
                assert alias in aliases, f"alias {alias} used before it was defined"
                topic = aliases[alias]
        out.append((m.topic, alias, topic, m.payload))
    return out


@pytest.mark.starling_only
def test_outbound_topic_aliases(client):
    """With Topic Alias Maximum 2 in CONNECT, the broker gives the first two topics aliases 1
    and 2 (topic and alias on first use, then the alias alone) and sends the third in full."""
    base = unique_id("ta")
    sub = client(connect_props=connect_props(TopicAliasMaximum=2))
    plain = client()
    assert sub.subscribe(f"{base}/#", 1) == [1]
    assert plain.subscribe(f"{base}/#", 1) == [1]
    pub = client()
    topics = [f"{base}/a", f"{base}/b", f"{base}/c"]
    for round_ in range(2):
        for t in topics:
            pub.publish(t, f"{t} {round_}".encode(), qos=1)
    got = resolve_aliases(sub.collector.wait(6))
    assert [(sent, alias) for sent, alias, _, _ in got] == [
        (topics[0], 1),
        (topics[1], 2),
        (topics[2], None),
        ("", 1),
        ("", 2),
        (topics[2], None),
    ]
    assert [(t, p) for _, _, t, p in got] == [
        (t, f"{t} {r}".encode()) for r in range(2) for t in topics
    ]
    # A client that allows no aliases never gets one (MQTT-3.3.2-9).
    for m in plain.collector.wait(6):
        assert m.prop("TopicAlias") is None
        assert m.topic in topics


# --- flow control ---------------------------------------------------------------------------


@pytest.mark.broker_config("[limits]\nreceive_maximum = 7\n")
def test_receive_maximum_advertised_in_connack(client):
    assert client().connack.properties.ReceiveMaximum == 7


@pytest.mark.starling_only  # mosquitto 2.0.11 has 3 unacknowledged out after the first ack
@pytest.mark.parametrize("qos", [1, 2])
def test_broker_never_exceeds_the_clients_receive_maximum(client, qos):
    """Receive Maximum 2 and no acknowledgements: two messages arrive, the third waits until
    one is acknowledged (MQTT-3.3.4-9)."""
    topic = unique_id("rm")
    sub = client(connect_props=connect_props(ReceiveMaximum=2), manual_ack=True)
    assert sub.subscribe(topic, qos) == [qos]
    pub = client()
    for i in range(5):
        pub.publish(topic, f"m{i}".encode(), qos=qos)
    sub.collector.wait(2)
    time.sleep(QUIET)
    msgs = sub.collector.messages
    assert [m.payload for m in msgs] == [b"m0", b"m1"], "at most 2 unacknowledged"
    sub.c.ack(msgs[0].mid, qos)
    sub.collector.wait(3)
    time.sleep(QUIET / 2)
    assert len(sub.collector) == 3
    for m in sub.collector.messages[1:]:
        sub.c.ack(m.mid, qos)
    got = sub.collector.wait(4)
    sub.c.ack(got[3].mid, qos)
    got = sub.collector.wait(5)
    sub.c.ack(got[4].mid, qos)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(5)]


# --- maximum packet size --------------------------------------------------------------------


def test_message_larger_than_the_clients_maximum_is_not_sent(client):
    topic = unique_id("mps")
    small = client(connect_props=connect_props(MaximumPacketSize=256))
    big = client()
    assert small.subscribe(topic, 1) == [1]
    assert big.subscribe(topic, 1) == [1]
    pub = client()
    pub.publish(topic, b"x" * 1000, qos=1)
    pub.publish(topic, b"fits", qos=1)
    assert [m.payload for m in big.collector.wait(2)] == [b"x" * 1000, b"fits"]
    assert small.collector.wait_one().payload == b"fits"
    time.sleep(QUIET / 2)
    assert [m.payload for m in small.collector.messages] == [b"fits"]


@pytest.mark.starling_only
def test_oversized_message_does_not_use_up_a_topic_alias(client):
    """A message dropped for the client's Maximum Packet Size must not leave the client with
    an alias it was never told about."""
    topic = unique_id("mpsa")
    sub = client(connect_props=connect_props(MaximumPacketSize=256, TopicAliasMaximum=4))
    assert sub.subscribe(topic, 1) == [1]
    pub = client()
    pub.publish(topic, b"y" * 1000, qos=1)
    pub.publish(topic, b"small 1", qos=1)
    pub.publish(topic, b"small 2", qos=1)
    got = resolve_aliases(sub.collector.wait(2))
    assert [(t, p) for _, _, t, p in got] == [(topic, b"small 1"), (topic, b"small 2")]
    assert got[0][0] == topic, "the first message a client sees on an alias carries the topic"


@pytest.mark.broker_config("[limits]\nmax_packet_size = 1024\n")
def test_packet_larger_than_the_brokers_maximum_is_refused(client):
    c = client()
    assert c.connack.properties.MaximumPacketSize == 1024
    topic = unique_id("mpb")
    assert c.subscribe(topic, 1) == [1]
    c.publish(topic, b"z" * 500, qos=1)
    assert c.collector.wait_one().payload == b"z" * 500
    c.c.publish(topic, b"z" * 2000, qos=1)
    d = c.wait_disconnected()
    assert d.rc == 0x95  # Packet too large


# --- request / response ---------------------------------------------------------------------


@pytest.mark.broker_config('[mqtt]\nresponse_information_prefix = "responses/"\n')
def test_response_information_and_a_request_response_round_trip(client):
    requester = client("requester-1", connect_props=connect_props(RequestResponseInformation=1))
    info = requester.connack.properties.ResponseInformation
    assert info == "responses/requester-1"
    # Not asked for: not sent.
    other = client()
    assert getattr(other.connack.properties, "ResponseInformation", None) is None

    responder = client("responder-1")
    assert responder.subscribe("service/echo", 1) == [1]
    assert requester.subscribe(f"{info}/#", 1) == [1]
    requester.publish(
        "service/echo",
        b"ping",
        qos=1,
        properties=publish_props(ResponseTopic=f"{info}/echo", CorrelationData=b"\x01req-7"),
    )
    req = responder.collector.wait_one()
    assert req.prop("ResponseTopic") == f"{info}/echo"
    responder.publish(
        req.prop("ResponseTopic"),
        b"pong",
        qos=1,
        properties=publish_props(CorrelationData=req.prop("CorrelationData")),
    )
    resp = requester.collector.wait_one()
    assert (resp.topic, resp.payload, resp.prop("CorrelationData")) == (
        f"{info}/echo",
        b"pong",
        b"\x01req-7",
    )


# --- server redirection ---------------------------------------------------------------------


@pytest.mark.broker_config('[mqtt]\nserver_reference = "mqtt-2.example:1883"\n')
def test_server_redirection_use_another_server(client):
    c = client(expect_rc=0x9C)
    assert c.connack.properties.ServerReference == "mqtt-2.example:1883"
    # 3.1.1 has no redirection: return code 3, server unavailable (which paho reports as
    # the MQTT 5 code 0x88).
    old = client(version=V311, expect_rc=None)
    assert old.connack.rc == 0x88


@pytest.mark.broker_config(
    '[mqtt]\nserver_reference = "mqtt-new.example:8883"\nserver_moved = true\n'
)
def test_server_redirection_server_moved(client):
    c = client(expect_rc=0x9D)
    assert c.connack.properties.ServerReference == "mqtt-new.example:8883"


# --- reason strings and Request Problem Information -----------------------------------------




@pytest.mark.starling_only
def test_reason_string_follows_request_problem_information(client):
    """PUBACK 0x87 carries a Reason String unless CONNECT said Request Problem Information 0
    (MQTT-3.1.2-29)."""
    default = client()
    rc, p = refused_publish(default, "$SYS/not-yours")
    assert rc.value == 0x87
    assert "not authorized" in p.ReasonString

    asked = client(connect_props=connect_props(RequestProblemInformation=1))
    rc, p = refused_publish(asked, "$SYS/not-yours")
    assert rc.value == 0x87 and p.ReasonString

    quiet = client(connect_props=connect_props(RequestProblemInformation=0))
    rc, p = refused_publish(quiet, "$SYS/not-yours")
    assert rc.value == 0x87
    assert getattr(p, "ReasonString", None) is None


# --- subscription identifiers ---------------------------------------------------------------


def test_subscription_identifiers_on_overlapping_subscriptions(client):
    base = unique_id("ov")
    sub = client()
    assert sub.subscribe(f"{base}/#", 1, sub_id=1) == [1]
    assert sub.subscribe(f"{base}/+/x", 1, sub_id=2) == [1]
    assert sub.subscribe(f"{base}/a/x", 1) == [1]
    pub = client()

    def ids_per_payload(payloads):
        """Subscription identifiers of every copy of each payload, once they have all come."""
        sub.collector.wait(len(payloads))
        time.sleep(QUIET / 2)
        got = {}
        for m in sub.collector.messages:
            got.setdefault(m.payload, []).append(sorted(m.prop("SubscriptionIdentifier") or []))
        sub.collector.clear()
        return got

    pub.publish(f"{base}/a/x", b"all three", qos=1)
    pub.publish(f"{base}/b/y", b"only #", qos=1)
    got = ids_per_payload([b"all three", b"only #"])
    if reference_broker() is None:
        # Starling sends one copy carrying every matching identifier (MQTT-3.3.4-4).
        assert got == {b"all three": [[1, 2]], b"only #": [[1]]}
    else:
        # A broker may send a copy per subscription instead, each with its own identifier
        # (MQTT-3.3.4-5).
        assert sorted(i for ids in got[b"all three"] for i in ids) == [1, 2]
        assert got[b"only #"] == [[1]]
    # Subscribing again to a filter replaces its identifier.
    assert sub.subscribe(f"{base}/+/x", 1, sub_id=9) == [1]
    pub.publish(f"{base}/c/x", b"again", qos=1)
    got = ids_per_payload([b"again"])
    assert sorted(i for ids in got[b"again"] for i in ids) == [1, 9]
    if reference_broker() is None:
        assert len(got[b"again"]) == 1


# --- enhanced authentication ----------------------------------------------------------------


def test_unknown_authentication_method_gets_0x8c(client):
    c = client(
        connect_props=connect_props(AuthenticationMethod="OAUTH2-JWT", AuthenticationData=b"t"),
        expect_rc=0x8C,
    )
    assert c.connack.rc == 0x8C


def starling_bin() -> str:
    b = os.environ.get("STARLING_BIN")
    if not b:
        pytest.fail("set STARLING_BIN to the starling binary")
    return b


USERS = {"alice": "wonderland", "bob": "builder"}


@pytest.fixture
def scram_broker(tmp_path):
    """Starling with a listener offering SCRAM-SHA-256 over a password file written by
    `starling passwd -H scram-sha-256`."""
    passwd = tmp_path / "passwd"
    for i, (user, pw) in enumerate(USERS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [starling_bin(), "passwd", *create, "-b", "-H", "scram-sha-256", str(passwd), user, pw],
            check=True, capture_output=True, timeout=60,
        )
    assert passwd.read_text().startswith("alice:$scram-sha-256$4096$")
    b = BrokerProcess(
        tmp_path,
        f'[[listener]]\nbind = "127.0.0.1:1883"\npassword_file = "{passwd}"\n'
        'allow_anonymous = false\nauth_methods = ["SCRAM-SHA-256"]\n',
    )
    b.start()
    try:
        yield b.address
    finally:
        b.stop()


# A minimal MQTT 5 codec for the packets of an AUTH exchange.

PROP_TYPES = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x11: "u32",
    0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte", 0x19: "byte",
    0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16", 0x22: "u16", 0x24: "byte",
    0x25: "byte", 0x26: "pair", 0x27: "u32", 0x28: "byte", 0x29: "byte", 0x2A: "byte",
}
METHOD, DATA, REASON_STRING = 0x15, 0x16, 0x1F


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def encode_props(method: str | None, data: bytes | None) -> bytes:
    body = b""
    if method is not None:
        body += bytes([METHOD]) + field(method.encode())
    if data is not None:
        body += bytes([DATA]) + field(data)
    return varint(len(body)) + body


def decode_props(buf: bytes, i: int) -> tuple[dict, int]:
    length, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    end, out = i + length, {}
    while i < end:
        pid = buf[i]
        i += 1
        kind = PROP_TYPES[pid]
        if kind == "byte":
            out[pid], i = buf[i], i + 1
        elif kind == "u16":
            out[pid], i = struct.unpack_from(">H", buf, i)[0], i + 2
        elif kind == "u32":
            out[pid], i = struct.unpack_from(">I", buf, i)[0], i + 4
        else:
            n = struct.unpack_from(">H", buf, i)[0]
            value, i = buf[i + 2:i + 2 + n], i + 2 + n
            if kind == "pair":
                n2 = struct.unpack_from(">H", buf, i)[0]
                value, i = (value, buf[i + 2:i + 2 + n2]), i + 2 + n2
            out[pid] = value.decode() if kind == "str" else value
    return out, end


class RawV5:
    """A TCP connection speaking just enough MQTT 5 for CONNECT, AUTH and CONNACK."""

    def __init__(self, addr):
        self.s = socket.create_connection(addr, timeout=TIMEOUT)
        self.buf = b""

    def close(self):
        self.s.close()

    def send(self, first: int, body: bytes):
        self.s.sendall(bytes([first]) + varint(len(body)) + body)

    def connect(self, client_id: str, method: str, data: bytes | None):
        body = b"\x00\x04MQTT\x05\x02\x00\x3c" + encode_props(method, data) + field(client_id.encode())
        self.send(0x10, body)

    def auth(self, reason: int, method: str | None, data: bytes | None):
        self.send(0xF0, bytes([reason]) + encode_props(method, data))

    def recv(self):
        """(packet type, reason code, properties), or None when the broker closed."""
        while True:
            if len(self.buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    length |= (b & 0x7F) << shift
                    shift, i = shift + 7, i + 1
                    if not b & 0x80:
                        break
                else:
                    i = None
                if i is not None and len(self.buf) >= i + length:
                    first, body = self.buf[0], self.buf[i:i + length]
                    self.buf = self.buf[i + length:]
                    kind = first >> 4
                    if kind == 2:  # CONNACK: flags, reason, properties
                        p, _ = decode_props(body, 2)
                        return "CONNACK", body[1], p
                    if kind in (14, 15):  # DISCONNECT, AUTH: reason, properties
                        if not body:
                            return ("AUTH" if kind == 15 else "DISCONNECT"), 0, {}
                        p, _ = decode_props(body, 1) if len(body) > 1 else ({}, 1)
                        return ("AUTH" if kind == 15 else "DISCONNECT"), body[0], p
                    return f"type {kind}", None, {}
            chunk = self.s.recv(4096)
            if not chunk:
                return None
            self.buf += chunk


class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802 section 3)."""

    def __init__(self, user: str, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n={user},r={self.nonce}"

    def client_first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        fields = dict(f.split("=", 1) for f in server_first.decode().split(","))
        assert fields["r"].startswith(self.nonce) and len(fields["r"]) > len(self.nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={fields['r']}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.new(stored_key, self.auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def server_final_ok(self, data: bytes) -> bool:
        expected = hmac.new(self.server_key, self.auth_message, "sha256").digest()
        return data == b"v=" + base64.b64encode(expected)


SCRAM = "SCRAM-SHA-256"


def scram_exchange(c: RawV5, scram: Scram, first_reason: int | None = None):
    """Sends client-first (in CONNECT, or in AUTH `first_reason`), answers server-first, and
    returns the broker's last packet."""
    if first_reason is None:
        c.connect(unique_id("scram"), SCRAM, scram.client_first())
    else:
        c.auth(first_reason, SCRAM, scram.client_first())
    kind, reason, p = c.recv()
    assert (kind, reason, p.get(METHOD)) == ("AUTH", 0x18, SCRAM), (kind, reason, p)
    c.auth(0x18, SCRAM, scram.client_final(p[DATA]))
    return c.recv()


@pytest.mark.starling_only
def test_scram_sha_256_login_and_reauthentication(scram_broker):
    c = RawV5(scram_broker)
    try:
        scram = Scram("alice", USERS["alice"])
        kind, reason, p = scram_exchange(c, scram)
        assert (kind, reason, p.get(METHOD)) == ("CONNACK", 0x00, SCRAM), (kind, reason, p)
        assert scram.server_final_ok(p[DATA])
        # Re-authentication on the same connection: AUTH 0x19 ... AUTH 0x00.
        again = Scram("alice", USERS["alice"])
        kind, reason, p = scram_exchange(c, again, first_reason=0x19)
        assert (kind, reason, p.get(METHOD)) == ("AUTH", 0x00, SCRAM), (kind, reason, p)
        assert again.server_final_ok(p[DATA])
        # A wrong password on re-authentication ends the connection (DISCONNECT 0x87).
        wrong = Scram("alice", "guess")
        kind, reason, _ = scram_exchange(c, wrong, first_reason=0x19)
        assert (kind, reason) == ("DISCONNECT", 0x87)
        assert c.recv() is None
    finally:
        c.close()


@pytest.mark.starling_only
@pytest.mark.parametrize("user,password", [("alice", "Wonderland"), ("nobody", "x")])
def test_scram_sha_256_refused(scram_broker, user, password):
    """Wrong password and unknown user both get CONNACK 0x86 after the whole exchange."""
    c = RawV5(scram_broker)
    try:
        kind, reason, p = scram_exchange(c, Scram(user, password))
        assert (kind, reason) == ("CONNACK", 0x86)
        assert METHOD not in p
        assert c.recv() is None
    finally:
        c.close()


@pytest.mark.starling_only
def test_paho_plain_password_against_scram_entries(scram_broker, request):
    from helpers import Client

    ok = Client(scram_broker, connect=False)
    ok.c.username_pw_set("bob", USERS["bob"])
    request.addfinalizer(ok.close)
    ok.connect()
    assert ok.subscribe("any/topic", 1) == [1]
    bad = Client(scram_broker, connect=False)
    bad.c.username_pw_set("bob", "Builder")
    request.addfinalizer(bad.close)
    assert bad.connect(expect_rc=None).rc == 0x86
    # paho names a method the listener does not offer: 0x8C.
    other = Client(
        scram_broker,
        connect_props=connect_props(AuthenticationMethod="SCRAM-SHA-1", AuthenticationData=b"n,,n=bob,r=x"),
        connect=False,
    )
    request.addfinalizer(other.close)
    assert other.connect(expect_rc=None).rc == 0x8C
