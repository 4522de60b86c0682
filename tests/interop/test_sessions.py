"""Persistent sessions, clean start, session takeover, and (Starling) sessions and
retained messages surviving a broker restart."""

import pytest

from helpers import V5, V311, Client, unique_id, wait_for

N = 5


def publish_n(pub, topic, n=N, qos=1):
    payloads = [f"msg-{i}".encode() for i in range(n)]
    for p in payloads:
        pub.publish(topic, p, qos=qos)
    return payloads


def test_v311_persistent_session_queues_qos1(client):
    cid = unique_id("p311")
    topic = unique_id("queued")
    sub = client(cid, V311, clean=False)
    assert sub.connack.session_present is False
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()

    pub = client(version=V311)
    payloads = publish_n(pub, topic)

    again = client(cid, V311, clean=False)
    assert again.connack.session_present is True
    msgs = again.collector.wait(N)
    assert [m.payload for m in msgs] == payloads
    assert all(m.topic == topic and m.qos == 1 for m in msgs)
    # The subscription itself survived too.
    pub.publish(topic, b"live", qos=1)
    assert again.collector.wait(N + 1)[-1].payload == b"live"


def test_v5_session_expiry_keeps_session(client):
    cid = unique_id("p5")
    topic = unique_id("queued")
    sub = client(cid, V5, clean=False, session_expiry=300)
    assert sub.connack.session_present is False
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()

    pub = client()
    payloads = publish_n(pub, topic)

    again = client(cid, V5, clean=False, session_expiry=300)
    assert again.connack.session_present is True
    msgs = again.collector.wait(N)
    assert [m.payload for m in msgs] == payloads
    assert all(m.topic == topic and m.qos == 1 for m in msgs)


def test_v5_qos2_queued_for_persistent_session(client):
    cid = unique_id("p5q2")
    topic = unique_id("queued2")
    sub = client(cid, V5, clean=False, session_expiry=300)
    assert sub.subscribe(topic, 2) == [2]
    sub.disconnect()
    pub = client()
    payloads = publish_n(pub, topic, qos=2)
    again = client(cid, V5, clean=False, session_expiry=300)
    assert again.connack.session_present is True
    msgs = again.collector.wait(N)
    assert [(m.payload, m.qos) for m in msgs] == [(p, 2) for p in payloads]


@pytest.mark.parametrize("version", [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")])
def test_clean_start_drops_session(client, version):
    cid = unique_id("clean")
    topic = unique_id("dropped")
    extra = {"session_expiry": 300} if version == V5 else {}
    sub = client(cid, version, clean=False, **extra)
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()
    pub = client(version=version)
    publish_n(pub, topic)

    fresh = client(cid, version, clean=True)
    assert fresh.connack.session_present is False
    # Neither the queued messages nor the subscription remain.
    pub.publish(topic, b"after", qos=1)
    fresh.collector.expect_none()

    # And the discarded session does not come back on the next persistent connect.
    fresh.disconnect()
    later = client(cid, version, clean=False, **extra)
    assert later.connack.session_present is False
    later.collector.expect_none(quiet=0.3)


def test_v5_session_expiry_zero_ends_session_at_disconnect(client):
    cid = unique_id("exp0")
    topic = unique_id("gone")
    sub = client(cid, V5, clean=False)  # no Session Expiry Interval: 0
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()
    pub = client()
    publish_n(pub, topic)
    again = client(cid, V5, clean=False, session_expiry=300)
    assert again.connack.session_present is False
    again.collector.expect_none()


@pytest.mark.parametrize("version", [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")])
def test_takeover_disconnects_first(client, version):
    cid = unique_id("take")
    first = client(cid, version)
    second = client(cid, version)
    assert second.connack.rc == 0
    assert second.connack.session_present is False
    first.wait_disconnected()
    # (paho keeps is_connected() True after a server DISCONNECT; its socket is gone though.)
    wait_for(lambda: first.c.socket() is None, what="first connection closed")
    # The new connection works.
    assert second.subscribe("take/t", 1) == [1]
    other = client(version=version)
    other.publish("take/t", b"x", qos=1)
    assert second.collector.wait_one().payload == b"x"


@pytest.mark.starling_only
def test_v5_takeover_sends_disconnect_0x8e(client):
    """MQTT 5 section 3.1.4: the old connection gets DISCONNECT with reason 0x8E
    (Session taken over) before it is closed. (mosquitto 2.0 just closes the socket.)"""
    cid = unique_id("take8e")
    first = client(cid, V5)
    second = client(cid, V5)
    assert second.connack.rc == 0
    d = first.wait_disconnected()
    assert d.rc == 0x8E, f"expected Session taken over, got {d.reason_code!r}"


def test_takeover_keeps_persistent_session(client):
    cid = unique_id("takep")
    topic = unique_id("tp")
    first = client(cid, V5, clean=False, session_expiry=300)
    assert first.subscribe(topic, 1) == [1]
    second = client(cid, V5, clean=False, session_expiry=300)
    assert second.connack.session_present is True
    first.wait_disconnected()
    pub = client()
    pub.publish(topic, b"to-second", qos=1)
    assert second.collector.wait_one().payload == b"to-second"


@pytest.mark.starling_only
def test_restart_keeps_retained_and_sessions(broker_process):
    """With --data-dir, retained messages, persistent sessions, their subscriptions and
    their queued QoS 1 messages survive a graceful restart (SIGTERM)."""
    addr = broker_process.address
    cid = unique_id("durable")
    topic = unique_id("dur")
    made = []
    try:
        sub = Client(addr, cid, V5, clean=False, session_expiry=3600)
        made.append(sub)
        assert sub.subscribe(topic, 1) == [1]
        sub.disconnect()
        pub = Client(addr, None, V5)
        made.append(pub)
        pub.publish("dur/retained", b"kept", qos=1, retain=True)
        payloads = publish_n(pub, topic)
        pub.disconnect()

        broker_process.restart()

        again = Client(addr, cid, V5, clean=False, session_expiry=3600)
        made.append(again)
        assert again.connack.session_present is True
        msgs = again.collector.wait(N)
        assert [m.payload for m in msgs] == payloads
        assert again.subscribe("dur/retained", 1) == [1]
        m = again.collector.wait_one("dur/retained")
        assert (m.payload, m.retain) == (b"kept", True)
    finally:
        for c in made:
            c.close()
