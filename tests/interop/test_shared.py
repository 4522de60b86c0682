"""Shared subscriptions ($share/group/filter, MQTT 5)."""

import time
from collections import Counter

from helpers import unique_id, wait_for

N = 20


def test_shared_subscription_each_message_to_one_member(client):
    topic = unique_id("shared") + "/t"
    members = [client() for _ in range(2)]
    for m in members:
        assert m.subscribe(f"$share/g/{topic}", 1) == [1]
    # A member of another group, and a plain subscriber, get every message.
    other_group = client()
    assert other_group.subscribe(f"$share/h/{topic}", 1) == [1]
    plain = client()
    assert plain.subscribe(topic, 1) == [1]

    pub = client()
    payloads = [f"m{i}".encode() for i in range(N)]
    for p in payloads:
        pub.publish(topic, p, qos=1)

    plain.collector.wait(N)
    other_group.collector.wait(N)

    wait_for(lambda: sum(len(m.collector) for m in members) >= N, what=f"{N} messages in the group")
    time.sleep(0.3)  # room for a duplicate to show up
    got = [msg for m in members for msg in m.collector.messages]
    counts = Counter(msg.payload for msg in got)
    assert sorted(counts) == sorted(payloads)
    assert all(n == 1 for n in counts.values()), f"delivered more than once: {counts}"
    # The topic is the real one, without the $share prefix.
    assert {msg.topic for msg in got} == {topic}
    assert all(len(m.collector) > 0 for m in members), [len(m.collector) for m in members]
    assert sorted(x.payload for x in plain.collector.messages) == sorted(payloads)
    assert sorted(x.payload for x in other_group.collector.messages) == sorted(payloads)


def test_shared_group_member_leaving(client):
    topic = unique_id("shared-leave") + "/t"
    a = client()
    b = client()
    assert a.subscribe(f"$share/g/{topic}", 1) == [1]
    assert b.subscribe(f"$share/g/{topic}", 1) == [1]
    pub = client()
    # After one member unsubscribes, the remaining one gets every message.
    assert b.unsubscribe(f"$share/g/{topic}") == [0]
    for i in range(5):
        pub.publish(topic, f"after {i}".encode(), qos=1)
    msgs = a.collector.wait(5)
    assert sorted(m.payload for m in msgs) == [f"after {i}".encode() for i in range(5)]
    assert len(b.collector) == 0
