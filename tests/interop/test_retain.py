"""Retained messages: set, replace, clear, delivery on subscribe, v5 retain handling."""

import pytest

from helpers import V5, V311, unique_id

VERSIONS = [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_set_replace_clear(client, version):
    pub = client(version=version)
    topic = unique_id("ret")

    pub.publish(topic, b"one", qos=1, retain=True)
    s1 = client(version=version)
    assert s1.subscribe(topic, 1) == [1]
    m = s1.collector.wait_one()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"one", 1, True)

    # Replace: a live subscriber gets it with retain 0; a new one gets only the new value.
    pub.publish(topic, b"two", qos=1, retain=True)
    live = s1.collector.wait(2)[1]
    assert (live.payload, live.retain) == (b"two", False)
    s2 = client(version=version)
    assert s2.subscribe(topic, 1) == [1]
    m = s2.collector.wait_one()
    assert (m.payload, m.retain) == (b"two", True)

    # Clear: an empty retained payload is forwarded to live subscribers as usual and
    # removes the retained message.
    pub.publish(topic, b"", qos=1, retain=True)
    assert s2.collector.wait(2)[1].payload == b""
    s3 = client(version=version)
    assert s3.subscribe(topic, 1) == [1]
    s3.collector.expect_none()


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_delivered_to_wildcard_subscription_at_min_qos(client, version):
    pub = client(version=version)
    pub.publish("rw/a", b"qos0", qos=0, retain=True)
    pub.publish("rw/b", b"qos1", qos=1, retain=True)
    pub.publish("rw/c/d", b"qos2", qos=2, retain=True)
    pub.publish("other/x", b"no", qos=1, retain=True)

    s = client(version=version)
    assert s.subscribe("rw/#", 1) == [1]
    msgs = s.collector.wait(3)
    got = sorted((m.topic, m.payload, m.qos, m.retain) for m in msgs)
    assert got == [
        ("rw/a", b"qos0", 0, True),
        ("rw/b", b"qos1", 1, True),
        ("rw/c/d", b"qos2", 1, True),
    ]
    s2 = client(version=version)
    assert s2.subscribe("rw/+", 2) == [2]
    got = sorted((m.topic, m.qos) for m in s2.collector.wait(2))
    assert got == [("rw/a", 0), ("rw/b", 1)]


def test_v5_retain_handling(client):
    pub = client()
    topic = unique_id("rh")
    pub.publish(topic, b"kept", qos=1, retain=True)

    # 2: never send retained messages on subscribe.
    s2 = client()
    assert s2.subscribe(topic, 1, retain_handling=2) == [1]
    # 1: only when the subscription is new.
    s1 = client()
    assert s1.subscribe(topic, 1, retain_handling=1) == [1]
    assert s1.collector.wait_one().payload == b"kept"
    # 0: on every subscribe, including a re-subscribe.
    s0 = client()
    assert s0.subscribe(topic, 1, retain_handling=0) == [1]
    assert s0.collector.wait_one().payload == b"kept"

    assert s1.subscribe(topic, 1, retain_handling=1) == [1]
    assert s0.subscribe(topic, 1, retain_handling=0) == [1]
    assert s0.collector.wait(2)[1].retain is True

    s2.collector.expect_none(quiet=0.5)
    assert len(s1.collector) == 1

    # A live publish still reaches the retain-handling-2 subscriber.
    pub.publish(topic, b"live", qos=1)
    assert s2.collector.wait_one().payload == b"live"


def test_v5_retain_as_published(client):
    pub = client()
    topic = unique_id("rap")
    rap = client()
    plain = client()
    assert rap.subscribe(topic, 1, retain_as_published=True) == [1]
    assert plain.subscribe(topic, 1) == [1]
    pub.publish(topic, b"r", qos=1, retain=True)
    pub.publish(topic, b"n", qos=1, retain=False)
    assert [(m.payload, m.retain) for m in rap.collector.wait(2)] == [(b"r", True), (b"n", False)]
    assert [(m.payload, m.retain) for m in plain.collector.wait(2)] == [(b"r", False), (b"n", False)]


@pytest.mark.parametrize("cli_version", ["mqttv311", "mqttv5"])
def test_mosquitto_sub_gets_retained_message(client, msub, cli_version):
    pub = client(version=V311)
    topic = unique_id("ret-cli")
    pub.publish(topic, b"retained value", qos=1, retain=True)
    sub = msub("-t", topic, "-q", "1", "-C", "1", "-V", cli_version)
    assert sub.wait_exit() == 0
    assert [(m.topic, m.payload, m.qos, m.retain) for m in sub.messages()] == [
        (topic, b"retained value", 1, True)
    ]
