"""CONNECT/CONNACK, subscribe and publish at each QoS, wildcards, $SYS, unsubscribe
(paho-mqtt, MQTT 3.1.1 and 5)."""

import pytest

from helpers import V5, V311, unique_id

VERSIONS = [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")]


@pytest.mark.parametrize("version", VERSIONS)
def test_connack_clean_start(client, version):
    c = client(version=version)
    ack = c.connack
    assert ack.rc == 0
    assert ack.session_present is False
    assert c.c.is_connected()


@pytest.mark.parametrize("version", VERSIONS)
def test_disconnect_and_reconnect_same_id(client, version):
    cid = unique_id("re")
    c = client(cid, version)
    c.disconnect()
    c2 = client(cid, version)
    assert c2.connack.rc == 0
    assert c2.connack.session_present is False


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_suback_grants_requested_qos(client, version, sub_qos):
    c = client(version=version)
    assert c.subscribe("t/granted", sub_qos) == [sub_qos]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_same_qos(client, version, qos):
    sub = client(version=version)
    pub = client(version=version)
    topic = f"a/b/{unique_id()}"
    assert sub.subscribe(topic, qos) == [qos]
    payload = bytes(range(256)) * 3
    pub.publish(topic, payload, qos=qos)
    m = sub.collector.wait_one()
    assert m.topic == topic
    assert m.payload == payload
    assert m.qos == qos
    assert m.retain is False
    assert len(sub.collector) == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_qos_downgraded_to_subscription_qos(client, version):
    """Delivered QoS is min(publish QoS, subscription QoS) for each of the 9 pairs."""
    pub = client(version=version)
    subs = {}
    for sub_qos in (0, 1, 2):
        s = client(version=version)
        assert s.subscribe("down/#", sub_qos) == [sub_qos]
        subs[sub_qos] = s
    for pub_qos in (0, 1, 2):
        pub.publish(f"down/{pub_qos}", f"p{pub_qos}".encode(), qos=pub_qos)
    for sub_qos, s in subs.items():
        msgs = s.collector.wait(3)
        got = sorted((m.topic, m.payload, m.qos) for m in msgs)
        want = [(f"down/{p}", f"p{p}".encode(), min(p, sub_qos)) for p in (0, 1, 2)]
        assert got == want, f"subscriber at QoS {sub_qos}"


@pytest.mark.parametrize("version", VERSIONS)
def test_wildcards(client, version):
    pub = client(version=version)
    filters = {
        "sport/+/player1": {"sport/tennis/player1", "sport//player1"},
        "sport/#": {"sport", "sport/tennis/player1", "sport/tennis/player2", "sport//player1", "sport/"},
        "sport/tennis/#": {"sport/tennis/player1", "sport/tennis/player2"},
        "+/+": {"sport/", "/finance"},
        "+": {"sport"},
        "/+": {"/finance"},
        "#": {
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player2",
            "sport//player1",
            "/finance",
        },
    }
    subs = {}
    for flt in filters:
        s = client(version=version)
        assert s.subscribe(flt, 1) == [1]
        subs[flt] = s
    topics = [
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player2",
        "sport//player1",
        "/finance",
    ]
    fence = "zz/fence/end/x"
    for s in subs.values():
        assert s.subscribe(fence, 1) == [1]
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    # Published last by the same client: once it has arrived, so has everything before it.
    pub.publish(fence, b"", qos=1)
    for flt, s in subs.items():
        s.collector.wait_one(fence)
        got = [m for m in s.collector.messages if m.topic != fence]
        assert sorted(m.topic for m in got) == sorted(filters[flt]), f"filter {flt!r}"
        for m in got:
            assert m.payload == m.topic.encode()


@pytest.mark.parametrize("version", VERSIONS)
def test_overlapping_subscriptions_one_session(client, version):
    """A session whose filters overlap gets a message at least once (MQTT 3.1.1 allows
    one copy per matching subscription; v5 brokers may also send one copy)."""
    sub = client(version=version)
    pub = client(version=version)
    assert sub.subscribe("ov/+/x", 1) == [1]
    assert sub.subscribe("ov/#", 0) == [0]
    pub.publish("ov/a/x", b"m", qos=1)
    msgs = sub.collector.wait(1)
    assert all(m.topic == "ov/a/x" and m.payload == b"m" for m in msgs)
    assert max(m.qos for m in sub.collector.messages) == 1


def test_sys_topics_not_matched_by_wildcards(client):
    """`#` and `+/...` do not match topics starting with `$`; the broker does publish $SYS."""
    hash_sub = client()
    plus_sub = client()
    sys_sub = client()
    assert hash_sub.subscribe("#", 0) == [0]
    assert plus_sub.subscribe("+/broker/#", 0) == [0]
    assert sys_sub.subscribe("$SYS/#", 0) == [0]
    # $SYS topics are either retained (sent on subscribe) or published periodically
    # (Starling's default interval is 10 s).
    m = sys_sub.collector.wait_one(timeout=12)
    assert m.topic.startswith("$SYS/")
    pub = client()
    pub.publish("plain/topic", b"x", qos=1)
    hash_sub.collector.wait_one("plain/topic")
    wrong = [x.topic for x in hash_sub.collector.messages + plus_sub.collector.messages if x.topic.startswith("$")]
    assert wrong == []


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe_stops_delivery(client, version):
    sub = client(version=version)
    pub = client(version=version)
    topic = unique_id("unsub")
    assert sub.subscribe(topic, 1) == [1]
    assert sub.subscribe("other/keep", 1) == [1]
    pub.publish(topic, b"before", qos=1)
    assert sub.collector.wait_one(topic).payload == b"before"
    codes = sub.unsubscribe(topic)
    if version == V5:
        assert codes == [0]
    pub.publish(topic, b"after", qos=1)
    # Same publisher, later message on a topic still subscribed: once it is here, the
    # unsubscribed one would have been too.
    pub.publish("other/keep", b"fence", qos=1)
    sub.collector.wait_one("other/keep")
    assert [m.payload for m in sub.collector.matching(topic)] == [b"before"]


def test_v5_unsubscribe_unknown_filter_reports_no_subscription(client):
    c = client()
    assert c.unsubscribe("never/subscribed") == [0x11]

