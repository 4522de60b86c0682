"""Protocol edges as real peers see them: a mosquitto broker bridging in and publishing its
state under $SYS, a paho client that is still writing when it is disconnected, control
characters, limits exceeded in CONNECT, a tiny Maximum Packet Size, and a reconnect right after
DISCONNECT. The raw-byte versions of these cases are in the Rust hostile-input suite."""

from __future__ import annotations

import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from conftest import HOST, free_port
from helpers import QUIET, TIMEOUT, V311, V5, props, refused_publish, unique_id, wait_for


MQTTv31 = mqtt.MQTTv31


def connect_props(**values):
    return props(PacketTypes.CONNECT, **values)


def disconnect_props(**values):
    return props(PacketTypes.DISCONNECT, **values)


# --- a mosquitto bridge's state topic ---------------------------------------------------------


@pytest.fixture
def mosquitto_bridge(broker, tmp_path):
    """A mosquitto broker bridging into the broker under test as client id `mosq-bridge`,
    forwarding `bridged/#` there. Yields (its process, its port)."""
    host, port = broker
    own = free_port()
    conf = tmp_path / "bridge.conf"
    conf.write_text(
        f"listener {own} {HOST}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "connection to-starling\n"
        f"address {host}:{port}\n"
        "remote_clientid mosq-bridge\n"
        "bridge_protocol_version mqttv311\n"
        "cleansession true\n"
        "notifications true\n"
        "restart_timeout 1\n"
        "topic bridged/# out 1\n"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, own
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.starling_only
def test_a_mosquitto_bridge_reports_its_state_under_sys(client, mosquitto_bridge):
    """mosquitto publishes its bridge's state, retained, to
    $SYS/broker/connection/<its client id>/state ("1" when up), and sets "0" there as its
    will. Starling lets a client publish there for its own client id only."""
    proc, own = mosquitto_bridge
    watcher = client()
    assert watcher.subscribe("$SYS/broker/connection/+/state", 1) == [1]
    up = watcher.collector.wait_one(timeout=10)
    assert (up.topic, up.payload) == ("$SYS/broker/connection/mosq-bridge/state", b"1")
    # Retained: a later subscriber gets it too.
    late = client()
    assert late.subscribe("$SYS/broker/connection/mosq-bridge/state", 1) == [1]
    assert late.collector.wait_one().payload == b"1"
    # The bridge works: a message published on mosquitto arrives here.
    assert watcher.subscribe("bridged/#", 1) == [1]
    sent = subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(own), "-t", "bridged/x", "-m", "over", "-q", "1"],
        capture_output=True,
        timeout=10,
    )
    assert sent.returncode == 0, sent.stderr
    assert watcher.collector.wait_one(topic="bridged/x").payload == b"over"
    # Another client may not publish to the bridge's state topic: PUBACK 0x87.
    other = client()
    info = other.c.publish("$SYS/broker/connection/mosq-bridge/state", b"0", qos=1)
    info.wait_for_publish(TIMEOUT)
    acks = wait_for(lambda: other.publish_acks, what="PUBACK")
    assert acks[0][1].value == 0x87
    # mosquitto killed: its will says "0".
    watcher.collector.clear()
    proc.kill()
    proc.wait(timeout=5)
    down = watcher.collector.wait_one(topic="$SYS/broker/connection/mosq-bridge/state")
    assert down.payload == b"0"


# --- the reason reaches a client that is still writing --------------------------------------


@pytest.mark.broker_config("[limits]\nmax_packet_size = 1024\n")
def test_a_client_still_writing_hears_why_it_was_disconnected(client):
    """The broker's DISCONNECT 0x95 reaches paho although paho has more queued to send: the
    broker stops writing and reads and discards the rest instead of resetting the socket,
    which would destroy the DISCONNECT before paho reads it."""
    for _ in range(3):
        c = client()
        topic = unique_id("flood")
        for _ in range(40):
            c.c.publish(topic, b"z" * 64 * 1024, qos=0)
        d = c.wait_disconnected()
        assert d.rc == 0x95, f"paho saw {d.reason_code!r} ({d.rc:#x})"


@pytest.mark.starling_only
def test_a_connect_too_large_is_answered_while_the_client_still_sends_it(client):
    """A CONNECT over max_connect_packet_size (64 KiB by default) gets CONNACK
    0x95 (v5) or return code 3 (3.1.1, which paho shows as 0x88), although paho is still
    writing it when the broker answers and closes."""
    big = connect_props()
    big.UserProperty = [("k", "v" * 60000)] * 35  # 2.1 MB
    # 3.1.1 fields are at most 64 KiB each: a will and credentials of 256 KiB in all.
    will = {"topic": "w" * 65000, "payload": b"w" * 65000}
    for _ in range(3):
        c = client(connect_props=big, expect_rc=None)
        assert c.connack.rc == 0x95, f"paho saw {c.connack.reason_code!r}"
        old = client(version=V311, will=will, connect=False)
        old.c.username_pw_set("u" * 65000, "p" * 65000)
        old.connect(expect_rc=None)
        assert old.connack.rc == 0x88, f"paho saw {old.connack.reason_code!r}"


# --- control characters ---------------------------------------------------------------------


@pytest.mark.starling_only
def test_control_characters_are_refused(client):
    """A client id with a control character: CONNACK 0x81; a filter with one: DISCONNECT
    0x81 (the specification lets a broker treat them as malformed; Starling does by
    default). Printable non-ASCII text is fine."""
    client("bad\x1b[2Jid", expect_rc=0x81)
    ok = client("caf\u00e9-\u2603")
    assert ok.subscribe("caf\u00e9/\u2603", 1) == [1]
    c = client()
    c.c.subscribe("log\ninjection", 1)
    assert c.wait_disconnected().rc == 0x81


@pytest.mark.broker_config("[limits]\nallow_control_characters = true\n")
def test_control_characters_pass_when_allowed(client):
    c = client("tab\tid")
    assert c.subscribe("a\tb", 1) == [1]
    c.publish("a\tb", b"x", qos=1)
    assert c.collector.wait_one().topic == "a\tb"


# --- limits exceeded in CONNECT -------------------------------------------------------------


@pytest.mark.broker_config("[limits]\nmax_user_properties = 2\nmax_topic_levels = 4\n")
def test_a_connect_over_a_limit_gets_a_connack_with_the_reason(client):
    p = connect_props()
    p.UserProperty = [("a", "1"), ("b", "2"), ("c", "3")]
    client(connect_props=p, expect_rc=0x97)
    fits = connect_props()
    fits.UserProperty = [("a", "1"), ("b", "2")]
    client(connect_props=fits)
    # 3.1.1: the will topic has five levels; return code 3 (paho shows it as 0x88).
    old = client(
        version=V311,
        will={"topic": "a/b/c/d/e", "payload": b"x"},
        expect_rc=None,
    )
    assert old.connack.rc == 0x88


def test_the_default_limits_let_a_large_connect_through(client):
    """By default user properties are limited only by the packet size."""
    p = connect_props()
    p.UserProperty = [(f"k{i}", "v") for i in range(3000)]
    client(connect_props=p)


# --- a tiny Maximum Packet Size -------------------------------------------------------------




@pytest.mark.starling_only
def test_answers_fit_a_tiny_maximum_packet_size(client):
    """A client accepting 16-byte packets gets its CONNACK, and PUBACK 0x87 without the
    Reason String it would otherwise carry."""
    tiny = client(connect_props=connect_props(MaximumPacketSize=16))
    rc, p = refused_publish(tiny, "$SYS/not-yours")
    assert rc.value == 0x87
    assert getattr(p, "ReasonString", None) is None
    roomy = client()
    rc, p = refused_publish(roomy, "$SYS/not-yours")
    assert rc.value == 0x87 and p.ReasonString


# --- reconnecting right after DISCONNECT ----------------------------------------------------


@pytest.mark.starling_only
def test_reconnecting_right_after_disconnect_with_expiry_0_starts_a_new_session(client):
    """DISCONNECT with Session Expiry Interval 0 ends the session even when the client
    connects again at once: Session Present 0, and its subscription is gone. (mosquitto 2.0
    fails this: the new CONNECT can take the session before the old connection has read the
    DISCONNECT; with a pause between the two it passes.)"""
    cid = unique_id("quick")
    topic = unique_id("quick-topic")
    for _ in range(10):
        c = client(cid, clean=False, session_expiry=300)
        assert not c.connack.session_present
        assert c.subscribe(topic, 1) == [1]
        c.c.disconnect(properties=disconnect_props(SessionExpiryInterval=0))
        again = client(cid, clean=False, session_expiry=300)
        assert not again.connack.session_present
        c.c.loop_stop()
        pub = client()
        pub.publish(topic, b"after", qos=1)
        again.collector.expect_none(quiet=QUIET / 10)
        again.disconnect(properties=disconnect_props(SessionExpiryInterval=0))


# --- a Subscription Identifier from a client; MQTT 3.1 --------------------------------------


@pytest.mark.starling_only
def test_a_subscription_identifier_in_a_clients_publish_is_a_protocol_error(client):
    """Only the server sends Subscription Identifiers (MQTT-3.3.4-6): DISCONNECT 0x82.
    (mosquitto 2.0 accepts the PUBLISH.)"""
    c = client()
    p = props(PacketTypes.PUBLISH, SubscriptionIdentifier=5)
    c.c.publish(unique_id("subid"), b"x", qos=0, properties=p)
    assert c.wait_disconnected().rc == 0x82


@pytest.mark.starling_only
def test_mqtt_3_1_never_sees_a_session_present_bit(client):
    """MQTT 3.1's CONNACK has no Session Present flag (its first byte is reserved): a 3.1
    client resuming its session gets 0 there, where 3.1.1 gets 1."""
    cid = unique_id("v31")
    first = client(cid, MQTTv31, clean=False)
    assert not first.connack.session_present
    first.disconnect()
    again = client(cid, MQTTv31, clean=False)
    assert not again.connack.session_present
    again.disconnect()
    cid = unique_id("v311")
    client(cid, V311, clean=False).disconnect()
    assert client(cid, V311, clean=False).connack.session_present
