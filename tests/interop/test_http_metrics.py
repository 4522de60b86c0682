"""The HTTP listener's /metrics, read with the official Prometheus client's parser (Python
prometheus_client, OpenMetrics and text format), moving as real clients (paho-mqtt,
mosquitto_pub) connect, publish and get refused."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from helpers import V5, V311, unique_id, wait_for

pytestmark = pytest.mark.starling_only


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def scrape(broker_process) -> dict[tuple[str, tuple], float]:
    """Every sample, by (name, sorted labels), parsed strictly as OpenMetrics."""
    status, ctype, text = fetch(broker_process.http_url + "/metrics")
    assert status == 200, text
    assert ctype.startswith("application/openmetrics-text"), ctype
    samples = {}
    for family in parse_openmetrics(text):
        assert family.name.startswith("starling_"), family.name
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_as_openmetrics_and_as_prometheus_text(broker_process):
    _, _, text = fetch(broker_process.http_url + "/metrics")
    families = {f.name: f for f in parse_openmetrics(text)}
    for name, kind in [
        ("starling_build", "info"),
        ("starling_uptime_seconds", "gauge"),
        ("starling_connections", "gauge"),
        ("starling_connects", "counter"),
        ("starling_messages_received", "counter"),
        ("starling_messages_sent_bytes", "counter"),
        ("starling_messages_dropped", "counter"),
        ("starling_messages_inflight", "gauge"),
        ("starling_messages_queued", "gauge"),
        ("starling_sessions", "gauge"),
        ("starling_subscriptions", "gauge"),
        ("starling_retained_messages", "gauge"),
        ("starling_retained_bytes", "gauge"),
        ("starling_auth", "counter"),
        ("starling_acl_denied", "counter"),
        ("starling_bans", "gauge"),
        ("starling_deliver_latency_seconds", "histogram"),
        ("starling_store_commit_duration_seconds", "histogram"),
        ("starling_store_batch_operations", "histogram"),
    ]:
        assert name in families, f"{name} missing"
        assert families[name].type == kind, (name, families[name].type)
    # The classic Prometheus text parser reads the same exposition.
    names = {f.name for f in parse_text(text)}
    assert "starling_messages_received" in names
    assert "starling_deliver_latency_seconds" in names


def test_metrics_move_as_clients_connect_publish_and_are_refused(broker_process, client):
    before = scrape(broker_process)
    sub = client(unique_id("sub"), V5)
    sub.subscribe("m/#", qos=1)
    pub = client(unique_id("pub"), V311)
    for i in range(5):
        pub.publish("m/t", f"hello {i}".encode(), qos=1)
    pub.publish("m/t", b"q0", qos=0)
    sub.collector.wait(6)
    pub.publish("nobody/listens", b"x", qos=1)
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker_process.port), "-t", "m/r",
         "-m", "retained", "-r", "-q", "1"],
        check=True, timeout=10,
    )
    sub.collector.wait(7)

    def moved():
        after = scrape(broker_process)
        return after if value(after, "starling_messages_received_total", qos="1") >= value(
            before, "starling_messages_received_total", qos="1") + 7 else None

    after = wait_for(moved, what="metrics to count the publishes")
    d = lambda name, **l: value(after, name, **l) - value(before, name, **l)  # noqa: E731
    assert d("starling_messages_received_total", qos="1") == 7
    assert d("starling_messages_received_total", qos="0") == 1
    assert d("starling_messages_received_bytes_total", qos="1") == 5 * len("hello 0") + 1 + len("retained")
    assert d("starling_messages_sent_total", qos="1") == 6
    assert d("starling_messages_sent_total", qos="0") == 1
    assert d("starling_messages_dropped_total", reason="no_subscriber") >= 1
    assert d("starling_connects_total", protocol="5.0") == 1
    assert d("starling_connects_total", protocol="3.1.1") >= 2
    assert value(after, "starling_clients_connected", protocol="5.0") >= 1
    assert value(after, "starling_subscriptions") >= 1
    assert value(after, "starling_retained_messages") >= 1
    assert value(after, "starling_retained_bytes") >= len("retained")
    assert d("starling_auth_total", method="anonymous", result="success") >= 3
    assert d("starling_deliver_latency_seconds_count") == 7
    assert d("starling_store_commits_total") >= 1
    assert value(after, "starling_store_batch_operations_count") >= 1
    assert d("starling_network_bytes_total", direction="received") > 0


@pytest.fixture
def passwd_broker(tmp_path):
    """A broker with a password file (alice / secret) and anonymous clients refused."""
    from conftest import BrokerProcess

    starling = os.environ["STARLING_BIN"]
    subprocess.run([starling, "passwd", "-c", "-b", str(tmp_path / "passwd"), "alice", "secret"],
                   check=True, timeout=30)
    b = BrokerProcess(tmp_path, f"""
[[listener]]
bind = "127.0.0.1:1883"
allow_anonymous = false
password_file = "{tmp_path / 'passwd'}"
""")
    b.start()
    yield b
    b.stop()


def test_authentication_outcomes_are_counted(passwd_broker):
    def pub(*args):
        return subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(passwd_broker.port), "-t", "a",
             "-m", "x", "-V", "5", *args],
            capture_output=True, timeout=10,
        ).returncode

    assert pub("-u", "alice", "-P", "secret") == 0
    assert pub("-u", "alice", "-P", "wrong") != 0
    assert pub() != 0
    after = wait_for(lambda: (s := scrape(passwd_broker)) and
                     value(s, "starling_auth_total", method="anonymous", result="failure") >= 1 and s,
                     what="the refusals to be counted")
    assert value(after, "starling_auth_total", method="password", result="success") == 1
    assert value(after, "starling_auth_total", method="password", result="failure") == 1
    assert value(after, "starling_auth_total", method="anonymous", result="failure") == 1
    assert value(after, "starling_connects_refused_total", reason="0x86") == 1
    assert value(after, "starling_connects_refused_total", reason="0x87") == 1


def test_the_admin_api_answers_json_and_the_health_checks_text(broker_process, client):
    c = client(unique_id("api"), V5)
    status, _, body = fetch(broker_process.http_url + "/healthz")
    assert (status, body) == (200, "ok\n")
    status, _, body = fetch(broker_process.http_url + "/readyz")
    assert (status, body) == (200, "ready\n")
    status, ctype, body = fetch(broker_process.http_url + "/api/v1/clients/" + c.client_id)
    assert status == 200 and ctype.startswith("application/json")
    assert json.loads(body)["protocol"] == "5.0"
    status, _, body = fetch(broker_process.http_url + "/api/v1/clients/nobody")
    assert status == 404 and json.loads(body)["code"] == "not_found"
