"""Will messages: published when the connection is lost, not on a normal DISCONNECT."""

import signal

import pytest

from paho.mqtt.packettypes import PacketTypes

from helpers import QUIET, V5, V311, props, unique_id

VERSIONS = [pytest.param(V311, id="v311"), pytest.param(V5, id="v5")]


def will(topic, payload=b"gone", qos=1, retain=False, properties=None):
    return {"topic": topic, "payload": payload, "qos": qos, "retain": retain, "properties": properties}


@pytest.mark.parametrize("version", VERSIONS)
def test_will_published_when_socket_closed_abruptly(client, version):
    topic = unique_id("will")
    watcher = client(version=version)
    assert watcher.subscribe(topic, 1) == [1]
    w = client(version=version, will=will(topic, b"last words", qos=1))
    w.drop()
    m = watcher.collector.wait_one()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"last words", 1, False)


@pytest.mark.parametrize("version", VERSIONS)
def test_will_not_published_on_normal_disconnect(client, version):
    topic = unique_id("nowill")
    watcher = client(version=version)
    assert watcher.subscribe(topic, 1) == [1]
    w = client(version=version, will=will(topic))
    w.disconnect()
    watcher.collector.expect_none(quiet=QUIET)


def test_v5_disconnect_with_will_message_reason_publishes_will(client):
    topic = unique_id("will04")
    watcher = client()
    assert watcher.subscribe(topic, 2) == [2]
    w = client(will=will(topic, b"bye with will", qos=2))
    w.disconnect(reason=0x04)
    m = watcher.collector.wait_one()
    assert (m.topic, m.payload, m.qos) == (topic, b"bye with will", 2)


def test_v5_will_properties_forwarded(client):
    topic = unique_id("willprops")
    watcher = client()
    assert watcher.subscribe(topic, 1) == [1]
    p = props(
        PacketTypes.WILLMESSAGE,
        ContentType="text/plain",
        ResponseTopic="reply/here",
        CorrelationData=b"\x00\x01corr",
        UserProperty=[("k", "v"), ("k", "v2")],
    )
    w = client(will=will(topic, b"props", properties=p))
    w.drop()
    m = watcher.collector.wait_one()
    assert m.payload == b"props"
    assert m.prop("ContentType") == "text/plain"
    assert m.prop("ResponseTopic") == "reply/here"
    assert m.prop("CorrelationData") == b"\x00\x01corr"
    assert m.prop("UserProperty") == [("k", "v"), ("k", "v2")]


@pytest.mark.parametrize("version", VERSIONS)
def test_will_retain_flag_honoured(client, version):
    topic = unique_id("willret")
    watcher = client(version=version)
    assert watcher.subscribe(topic, 1) == [1]
    w = client(version=version, will=will(topic, b"retained will", qos=1, retain=True))
    w.drop()
    live = watcher.collector.wait_one()
    assert (live.payload, live.retain) == (b"retained will", False)
    # Once published, the will is the topic's retained message.
    late = client(version=version)
    assert late.subscribe(topic, 1) == [1]
    m = late.collector.wait_one()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"retained will", 1, True)


@pytest.mark.parametrize("cli_version", ["mqttv311", "mqttv5"])
def test_will_of_killed_mosquitto_sub(client, msub, cli_version):
    topic = unique_id("clwill")
    watcher = client()
    assert watcher.subscribe(topic, 1) == [1]
    s = msub(
        "-t",
        unique_id("idle"),
        "-V",
        cli_version,
        "--will-topic",
        topic,
        "--will-payload",
        "killed",
        "--will-qos",
        "1",
    )
    s.wait_subscribed()
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(timeout=5)
    m = watcher.collector.wait_one()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"killed", 1, False)
