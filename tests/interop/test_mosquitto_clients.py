"""mosquitto_pub / mosquitto_sub (libmosquitto) against the broker."""

import pytest

from helpers import V5, V311, mosquitto_pub, unique_id

CLI_VERSIONS = ["mqttv311", "mqttv5"]


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_to_sub(broker, msub, cli_version, qos):
    topic = unique_id("cli") + "/a b/ü"
    sub = msub("-t", topic, "-q", str(qos), "-C", "2", "-V", cli_version)
    sub.wait_subscribed()
    mosquitto_pub(broker, "-t", topic, "-q", str(qos), "-V", cli_version, "-m", "hello world")
    mosquitto_pub(broker, "-t", topic, "-q", str(qos), "-V", cli_version, "-m", "second")
    assert sub.wait_exit() == 0
    assert [(m.topic, m.payload, m.qos, m.retain) for m in sub.messages()] == [
        (topic, b"hello world", qos, False),
        (topic, b"second", qos, False),
    ]


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_pub_file_payload_binary(broker, msub, tmp_path, cli_version):
    topic = unique_id("clifile")
    payload = bytes(range(256)) * 40
    f = tmp_path / "payload.bin"
    f.write_bytes(payload)
    sub = msub("-t", topic, "-q", "1", "-C", "1", "-V", cli_version)
    sub.wait_subscribed()
    mosquitto_pub(broker, "-t", topic, "-q", "1", "-V", cli_version, "-f", str(f))
    assert sub.wait_exit() == 0
    [m] = sub.messages()
    assert m.payload == payload


@pytest.mark.parametrize("version", [pytest.param(V311, id="paho-v311"), pytest.param(V5, id="paho-v5")])
@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_cli_pub_to_paho_and_paho_to_cli_sub(broker, client, msub, version, cli_version):
    topic = unique_id("mix")
    p = client(version=version)
    assert p.subscribe(topic + "/in", 2) == [2]
    mosquitto_pub(broker, "-t", topic + "/in", "-q", "2", "-V", cli_version, "-m", "from cli")
    m = p.collector.wait_one()
    assert (m.topic, m.payload, m.qos) == (topic + "/in", b"from cli", 2)

    sub = msub("-t", topic + "/out", "-q", "1", "-C", "1", "-V", cli_version)
    sub.wait_subscribed()
    p.publish(topic + "/out", b"from paho", qos=1)
    assert sub.wait_exit() == 0
    assert [(x.topic, x.payload, x.qos) for x in sub.messages()] == [(topic + "/out", b"from paho", 1)]


@pytest.mark.parametrize("cli_version", CLI_VERSIONS)
def test_retained_with_r_and_cleared_with_n(broker, msub, cli_version):
    topic = unique_id("cliret")
    mosquitto_pub(broker, "-t", topic, "-q", "1", "-V", cli_version, "-r", "-m", "kept")
    sub = msub("-t", topic, "-q", "1", "-C", "1", "-V", cli_version)
    assert sub.wait_exit() == 0
    assert [(m.payload, m.retain) for m in sub.messages()] == [(b"kept", True)]

    # -r -n: a zero-length retained message clears it.
    mosquitto_pub(broker, "-t", topic, "-q", "1", "-V", cli_version, "-r", "-n")
    sub2 = msub("-t", topic, "-q", "1", "-V", cli_version, "-W", "1")
    sub2.wait_subscribed()
    sub2.wait_exit(timeout=5)
    assert sub2.messages() == []


def test_v5_user_property_from_cli(broker, client):
    topic = unique_id("cliprop")
    p = client()
    assert p.subscribe(topic, 1) == [1]
    mosquitto_pub(
        broker,
        "-t",
        topic,
        "-q",
        "1",
        "-V",
        "mqttv5",
        "-D",
        "PUBLISH",
        "user-property",
        "origin",
        "cli",
        "-D",
        "PUBLISH",
        "content-type",
        "text/plain",
        "-m",
        "with props",
    )
    m = p.collector.wait_one()
    assert m.payload == b"with props"
    assert m.prop("UserProperty") == [("origin", "cli")]
    assert m.prop("ContentType") == "text/plain"


def test_cli_persistent_session(broker, msub):
    """mosquitto_sub -c (clean session 0) with a fixed id gets what was queued while away."""
    topic = unique_id("clisess")
    cid = unique_id("clisess-id")
    first = msub("-t", topic, "-q", "1", "-c", "-V", "mqttv311", "-W", "1", client_id=cid)
    first.wait_subscribed()
    first.wait_exit(timeout=5)
    for i in range(3):
        mosquitto_pub(broker, "-t", topic, "-q", "1", "-m", f"queued {i}")
    again = msub("-t", topic, "-q", "1", "-c", "-V", "mqttv311", "-C", "3", client_id=cid)
    assert again.wait_exit() == 0
    assert [m.payload for m in again.messages()] == [b"queued 0", b"queued 1", b"queued 2"]
