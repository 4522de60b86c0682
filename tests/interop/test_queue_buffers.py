"""Buffers per subscription (Starling's `queue_scope = "subscription"`) with paho-mqtt: a
persistent 3.1.1 subscriber with two subscriptions is away while a flood arrives on one and a
few messages on the other; it gets the newest of the flood, in order, and everything of the
quiet one. With one queue per session (the default, same total bound) the flood evicts them."""

import time

import pytest

from helpers import V311, unique_id

FLOOD = 1000
QUIET = 10
PER_SUB = 300


def run(client):
    cid = unique_id("buffers")
    sub = client(cid, V311, clean=False)
    assert sub.subscribe("flood/#", 1) == [1]
    assert sub.subscribe("quiet/#", 1) == [1]
    sub.disconnect()

    pub = client(version=V311)
    for i in range(QUIET):
        pub.publish("quiet/a", f"q{i}", qos=1)
    # Without waiting for each acknowledgement (paho keeps its own window), then for all.
    infos = [pub.c.publish("flood/a", f"f{i}", qos=1) for i in range(FLOOD)]
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()
    pub.disconnect()

    again = client(cid, V311, clean=False)
    assert again.connack.session_present is True
    return again


def payloads(msgs, topic):
    return [m.payload.decode() for m in msgs if m.topic == topic]


@pytest.mark.starling_only
@pytest.mark.broker_config(
    '[limits]\nqueue_scope = "subscription"\n'
    f"max_queued_messages_per_subscription = {PER_SUB}\n"
    f"max_queued_messages = {PER_SUB + QUIET}\n"
)
def test_subscription_scope_keeps_the_quiet_filter(client):
    again = run(client)
    msgs = again.collector.wait(PER_SUB + QUIET)
    assert payloads(msgs, "quiet/a") == [f"q{i}" for i in range(QUIET)]
    assert payloads(msgs, "flood/a") == [f"f{i}" for i in range(FLOOD - PER_SUB, FLOOD)]
    # In turns: the quiet filter's messages come among the first.
    first = [m.topic for m in msgs[: 2 * QUIET]]
    assert first.count("quiet/a") == QUIET, first
    # And nothing more.
    time.sleep(0.3)
    assert len(again.collector) == PER_SUB + QUIET


@pytest.mark.starling_only
@pytest.mark.broker_config(f"[limits]\nmax_queued_messages = {PER_SUB + QUIET}\n")
def test_session_scope_loses_the_quiet_filter_to_the_flood(client):
    again = run(client)
    msgs = again.collector.wait(PER_SUB + QUIET)
    assert payloads(msgs, "quiet/a") == []
    assert payloads(msgs, "flood/a") == [
        f"f{i}" for i in range(FLOOD - PER_SUB - QUIET, FLOOD)
    ]
