"""MQTT 5 features, and messages crossing between 3.1.1 and 5 clients."""

import socket
import time

import pytest

from helpers import V5, V311, publish_props, unique_id


def test_no_local(client):
    topic = unique_id("nolocal")
    me = client()
    other = client()
    assert me.subscribe(topic, 1, no_local=True) == [1]
    me.publish(topic, b"from me", qos=1)
    other.publish(topic, b"from other", qos=1)
    m = me.collector.wait_one()
    assert m.payload == b"from other"
    # Without no_local, a client does get its own messages.
    echo = client()
    assert echo.subscribe(topic, 1) == [1]
    echo.publish(topic, b"echo", qos=1)
    assert echo.collector.wait_one().payload == b"echo"
    me.collector.wait(2)  # "echo" from another client reaches me too
    assert [x.payload for x in me.collector.messages] == [b"from other", b"echo"]


def test_subscription_identifier(client):
    sub = client()
    pub = client()
    assert sub.subscribe("sid/+/a", 1, sub_id=42) == [1]
    assert sub.subscribe("sid/other", 1, sub_id=7) == [1]
    assert sub.subscribe("sid/none", 1) == [1]
    pub.publish("sid/x/a", b"1", qos=1)
    pub.publish("sid/other", b"2", qos=1)
    pub.publish("sid/none", b"3", qos=1)
    msgs = sub.collector.wait(3)
    got = {m.payload: m.prop("SubscriptionIdentifier") for m in msgs}
    assert got == {b"1": [42], b"2": [7], b"3": None}


def test_publish_properties_forwarded_unchanged(client):
    topic = unique_id("props")
    sub = client()
    pub = client()
    assert sub.subscribe(topic, 2) == [2]
    user = [("a", "1"), ("b", "two"), ("a", "again"), ("empty", ""), ("ünï", "cödé")]
    p = publish_props(
        UserProperty=user,
        ContentType="application/json; charset=utf-8",
        ResponseTopic="responses/for/me",
        CorrelationData=b"\x00\xff\x10corr-id",
        PayloadFormatIndicator=1,
    )
    pub.publish(topic, b'{"k": 1}', qos=2, properties=p)
    m = sub.collector.wait_one()
    assert m.payload == b'{"k": 1}'
    assert m.qos == 2
    assert m.prop("UserProperty") == user
    assert m.prop("ContentType") == "application/json; charset=utf-8"
    assert m.prop("ResponseTopic") == "responses/for/me"
    assert m.prop("CorrelationData") == b"\x00\xff\x10corr-id"
    assert m.prop("PayloadFormatIndicator") == 1


def test_message_expiry_interval_forwarded(client):
    topic = unique_id("expiry")
    sub = client()
    pub = client()
    assert sub.subscribe(topic, 1) == [1]
    pub.publish(topic, b"e", qos=1, properties=publish_props(MessageExpiryInterval=120))
    m = sub.collector.wait_one()
    exp = m.prop("MessageExpiryInterval")
    # The broker forwards the remaining lifetime: at most what was sent, minus the seconds
    # the message waited (none to speak of here).
    assert exp is not None and 118 <= exp <= 120


def test_message_expiry_counts_down_while_queued(client):
    cid = unique_id("expq")
    topic = unique_id("expq")
    sub = client(cid, V5, clean=False, session_expiry=300)
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()
    pub = client()
    pub.publish(topic, b"short", qos=1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish(topic, b"long", qos=1, properties=publish_props(MessageExpiryInterval=100))
    time.sleep(2.1)
    again = client(cid, V5, clean=False, session_expiry=300)
    assert again.connack.session_present is True
    m = again.collector.wait_one()
    assert m.payload == b"long"
    assert 95 <= m.prop("MessageExpiryInterval") <= 98
    time.sleep(0.3)
    assert [x.payload for x in again.collector.messages] == [b"long"]


def test_expired_retained_message_not_delivered(client):
    pub = client()
    pub.publish("exp/ret/short", b"s", qos=1, retain=True, properties=publish_props(MessageExpiryInterval=1))
    pub.publish("exp/ret/long", b"l", qos=1, retain=True, properties=publish_props(MessageExpiryInterval=100))
    time.sleep(2.1)
    sub = client()
    assert sub.subscribe("exp/ret/#", 1) == [1]
    m = sub.collector.wait_one()
    assert (m.topic, m.retain) == ("exp/ret/long", True)
    time.sleep(0.3)
    assert [x.topic for x in sub.collector.messages] == ["exp/ret/long"]


def test_assigned_client_identifier(client):
    c = client("", V5)
    ack = c.connack
    assert ack.rc == 0
    assert ack.session_present is False
    assigned = ack.properties.AssignedClientIdentifier
    assert isinstance(assigned, str) and assigned != ""
    # Two empty-id clients get different identifiers.
    c2 = client("", V5)
    assert c2.connack.properties.AssignedClientIdentifier != assigned


def test_v311_empty_client_id_with_clean_session_accepted(client):
    c = client("", V311, clean=True)
    assert c.connack.rc == 0
    assert c.subscribe("empty/id", 1) == [1]


def test_v311_empty_client_id_without_clean_session_rejected(broker):
    """MQTT 3.1.1 [MQTT-3.1.3-8]: CONNACK 0x02 (identifier rejected), then close."""
    with socket.create_connection(broker, timeout=5) as s:
        # CONNECT, protocol "MQTT" level 4, flags 0 (clean session 0), keep alive 60, id "".
        body = b"\x00\x04MQTT\x04\x00\x00\x3c\x00\x00"
        s.sendall(bytes([0x10, len(body)]) + body)
        data = b""
        while len(data) < 4:
            chunk = s.recv(4 - len(data))
            if not chunk:
                break
            data += chunk
        assert data == b"\x20\x02\x00\x02"
        assert s.recv(1) == b""  # then the broker closes the connection


def test_connack_properties_sane(client):
    c = client()
    p = c.connack.properties
    # Optional properties; when present they must be in range.
    rm = getattr(p, "ReceiveMaximum", None)
    assert rm is None or rm >= 1
    mq = getattr(p, "MaximumQoS", None)
    assert mq is None or mq in (0, 1)
    ra = getattr(p, "RetainAvailable", None)
    assert ra is None or ra == 1  # the broker supports retained messages


def test_topic_alias_from_publisher(client):
    """A publisher using a topic alias: the subscriber sees the full topic name."""
    topic = unique_id("alias")
    sub = client()
    pub = client()
    assert sub.subscribe(topic, 1) == [1]
    alias_max = getattr(pub.connack.properties, "TopicAliasMaximum", 0)
    if alias_max < 1:
        pytest.skip("broker accepts no topic aliases")
    pub.publish(topic, b"first", qos=1, properties=publish_props(TopicAlias=1))
    pub.publish("", b"second", qos=1, properties=publish_props(TopicAlias=1))
    msgs = sub.collector.wait(2)
    assert [(m.topic, m.payload) for m in msgs] == [(topic, b"first"), (topic, b"second")]


def test_v311_publisher_to_v5_subscriber(client):
    topic = unique_id("x35")
    sub = client(version=V5)
    pub = client(version=V311)
    assert sub.subscribe(topic, 2) == [2]
    payloads = [b"", b"plain", bytes(range(256)), "ütf-8 ✓".encode()]
    for i, p in enumerate(payloads):
        pub.publish(topic, p, qos=i % 3)
    msgs = sub.collector.wait(len(payloads))
    # Order across QoS levels is not guaranteed (a QoS 2 message is handed over at PUBREL).
    assert sorted((m.topic, m.payload, m.qos) for m in msgs) == sorted(
        (topic, p, i % 3) for i, p in enumerate(payloads)
    )
    for m in msgs:
        assert m.prop("UserProperty") is None


def test_v5_publisher_with_properties_to_v311_subscriber(client):
    topic = unique_id("x53")
    sub = client(version=V311)
    pub = client(version=V5)
    assert sub.subscribe(topic, 2) == [2]
    p = publish_props(UserProperty=[("k", "v")], ContentType="text/plain", MessageExpiryInterval=60)
    payloads = [b"one", bytes(range(256)), b""]
    for i, payload in enumerate(payloads):
        pub.publish(topic, payload, qos=(i + 1) % 3, properties=p)
    msgs = sub.collector.wait(len(payloads))
    assert sorted((m.topic, m.payload, m.qos) for m in msgs) == sorted(
        (topic, payload, (i + 1) % 3) for i, payload in enumerate(payloads)
    )

