"""A three-node Starling cluster, black box: three `starling serve` processes on 127.0.0.1,
127.0.0.2 and 127.0.0.3, each with a `[cluster]` section naming the three, and paho clients
on different nodes.

* Messages published on one node reach the subscribers on the others (MQTT 5 and 3.1.1),
  once each, at min(publish QoS, subscription QoS), with `+` and `#` matched across nodes
  and `$` topics not matched by a leading wildcard (MQTT 4.7.2).
* A client id connecting on another node takes the session over (DISCONNECT 0x8E); a
  persistent session moves with its client, its QoS 2 messages delivered once.
* `GET /api/v1/cluster` on every node: three members, one leader agreed by all.
* The nodes' gRPC service is the published proto file's: a peer calling it with Google's
  grpcio, its stubs generated from proto/starling/cluster/v1/cluster.proto, is answered in
  it, a field it adds is skipped, a message that does not decode is refused with
  INVALID_ARGUMENT, and a node of the build before gRPC (its own frames) is refused.

Not tested here: faults between nodes (crates/starling/tests/cluster.rs cuts links with a
fault proxy), shared groups and retained messages across nodes (tested there too).

The cluster is started once for the module. Before each test every node must agree on the
leader and know no filter of the others (the clients of the previous test are gone); a test
waits, before it publishes, until the publishing node knows the subscribers' filters
(`remote_routes`, a count of (node, filter) routes), since routes reach the other nodes
asynchronously.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import free_port
from helpers import QUIET, TIMEOUT, V5, V311, Client, publish_props, unique_id, wait_for

# mosquitto (the reference broker) has no cluster.
pytestmark = pytest.mark.starling_only

NODE_IDS = (1, 2, 3)
# A node's MQTT listener is open within this (it is started before the cluster forms).
START_TIMEOUT = 10.0
# Election (600 ms timeout) and the three incarnations announced through the log.
SETTLE_TIMEOUT = 20.0
STOP_GRACE = 5.0
HTTP_TIMEOUT = 2.0

VERSIONS = {V5: "v5", V311: "v311"}

_given: set[tuple[str, int]] = set()


def free_port_on(ip: str) -> int:
    """A port nothing listens on now at `ip` (any 127.0.0.x), not handed out before."""
    if ip == "127.0.0.1":
        return free_port()  # conftest's, which remembers what the other tests were given
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        if (ip, port) not in _given:
            _given.add((ip, port))
            return port
    raise RuntimeError(f"no free port on {ip}")


def port_accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Node:
    id: int
    ip: str
    mqtt_port: int
    http_port: int
    cluster_port: int
    dir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.mqtt_port)

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    def config(self, seeds: str) -> str:
        return (
            "[cluster]\n"
            "enabled = true\n"
            f"node_id = {self.id}\n"
            f'bind = "{self.ip}:{self.cluster_port}"\n'
            f"seeds = [{seeds}]\n"
            "heartbeat_ms = 100\n"
            "election_timeout_ms = 600\n"
            "propose_timeout_ms = 2000\n"
        )

    def start(self, binary: str, seeds: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "starling.toml"
        config.write_text(self.config(seeds))
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "serve",
                    "--bind",
                    f"{self.ip}:{self.mqtt_port}",
                    "--data-dir",
                    str(self.dir / "data"),
                    "--http-bind",
                    f"{self.ip}:{self.http_port}",
                    "--config",
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_GRACE)

    def status(self) -> dict | None:
        """`GET /api/v1/cluster`, or None if the node does not answer (yet)."""
        url = f"http://{self.ip}:{self.http_port}/api/v1/cluster"
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as r:
                if not r.headers.get("Content-Type", "").startswith("application/json"):
                    return None
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    def __init__(self, workdir: Path):
        self.nodes: dict[int, Node] = {}
        for n in NODE_IDS:
            ip = f"127.0.0.{n}"
            self.nodes[n] = Node(
                id=n,
                ip=ip,
                mqtt_port=free_port_on(ip),
                http_port=free_port_on(ip),
                cluster_port=free_port_on(ip),
                dir=workdir / f"n{n}",
            )
        self.seeds = ", ".join(f'"{n.id}@{n.ip}:{n.cluster_port}"' for n in self.nodes.values())

    def __getitem__(self, n: int) -> Node:
        return self.nodes[n]

    def start(self, binary: str) -> None:
        for node in self.nodes.values():
            node.start(binary, self.seeds)
        deadline = time.monotonic() + START_TIMEOUT
        for node in self.nodes.values():
            while not port_accepts(*node.address):
                if node.proc is None or node.proc.poll() is not None:
                    pytest.fail(f"node {node.id} exited before accepting MQTT\n{self.logs()}")
                if time.monotonic() >= deadline:
                    pytest.fail(f"node {node.id} did not accept MQTT within {START_TIMEOUT}s\n{self.logs()}")
                time.sleep(0.02)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def status(self, n: int) -> dict | None:
        return self.nodes[n].status()

    def statuses(self) -> dict[int, dict | None]:
        return {n: node.status() for n, node in self.nodes.items()}

    def settled(self, timeout: float = SETTLE_TIMEOUT) -> tuple[int, dict[int, dict]]:
        """Waits until every node names the same leader and has applied every node's current
        incarnation; returns the leader and the statuses it agreed in."""
        deadline = time.monotonic() + timeout
        last: dict[int, dict | None] = {}
        while True:
            last = self.statuses()
            if all(s is not None for s in last.values()):
                incarnations = {n: s.get("incarnation") for n, s in last.items()}
                leaders = {s.get("leader") for s in last.values()}
                agreed = all(
                    s.get("announced") is True
                    and all(
                        any(m.get("id") == n and m.get("incarnation") == inc for m in s.get("members", []))
                        for n, inc in incarnations.items()
                    )
                    for s in last.values()
                )
                if len(leaders) == 1 and leaders <= set(NODE_IDS) and agreed:
                    return leaders.pop(), last  # type: ignore[return-value]
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"the cluster did not settle within {timeout}s; last statuses:\n"
                    f"{json.dumps(last, indent=1)}\n{self.logs()}"
                )
            time.sleep(0.1)

    def remote_routes(self, n: int) -> int | None:
        s = self.status(n)
        return None if s is None else s.get("remote_routes")

    def wait_routes(self, n: int, count: int, timeout: float = TIMEOUT) -> None:
        """Waits until node `n` knows exactly `count` (node, filter) routes of the others."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.remote_routes(n)
            if got == count:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"node {n} knows {got} remote route(s), not {count}, after {timeout}s: "
                    f"{json.dumps(self.status(n), indent=1)}"
                )
            time.sleep(0.02)

    def logs(self) -> str:
        return "\n".join(f"--- node {n.id} ({n.log_path}) ---\n{n.log_tail()}" for n in self.nodes.values())


@pytest.fixture(scope="module")
def the_cluster(tmp_path_factory):
    binary = os.environ.get("STARLING_BIN")
    if not binary:
        pytest.fail("set STARLING_BIN to the starling binary")
    for ip in ("127.0.0.2", "127.0.0.3"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((ip, 0))
        except OSError as e:
            pytest.skip(f"cannot bind {ip} on this machine ({e})")
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start(binary)
        c.settled()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(request, the_cluster):
    """The module's cluster, settled, with no client's filter left from an earlier test."""
    the_cluster.settled()
    try:
        for n in NODE_IDS:
            the_cluster.wait_routes(n, 0)
    except AssertionError:
        print(the_cluster.logs())
        raise
    yield the_cluster
    failed = any(
        getattr(getattr(request.node, "rep_" + phase, None), "failed", False) for phase in ("setup", "call")
    )
    if failed:
        print(f"\n--- cluster statuses ---\n{json.dumps(the_cluster.statuses(), indent=1)}")
        print(the_cluster.logs())


@pytest.fixture
def client_on(cluster):
    """Factory of connected paho clients on a node: ``client_on(2, "id", V311)``; closed at
    teardown (their clean sessions end, so the other nodes forget their filters)."""
    made: list[Client] = []

    def make(node: int, client_id=None, version=V5, *, connect=True, expect_rc=0, **kwargs) -> Client:
        c = Client(cluster[node].address, client_id, version, connect=False, **kwargs)
        made.append(c)
        if connect:
            c.connect(expect_rc=expect_rc)
        return c

    yield make
    for c in made:
        c.close()


def received(c: Client) -> list[tuple[str, bytes, int]]:
    return sorted((m.topic, m.payload, m.qos) for m in c.collector.messages)


# --- messages between nodes --------------------------------------------------------


def test_qos_0_1_2_from_node_1_reach_v5_and_v311_subscribers_on_nodes_2_and_3_once(cluster, client_on):
    """Twelve subscribers (nodes 2 and 3, MQTT 5 and 3.1.1, subscription QoS 0, 1 and 2) to
    one topic; a publish of each QoS on node 1 reaches each of them once, at
    min(publish QoS, subscription QoS) (MQTT 3.8.4), and not as retained."""
    topic = unique_id("cl-qos") + "/t"
    subs: dict[tuple[int, int, int], Client] = {}
    for node in (2, 3):
        for version, vname in VERSIONS.items():
            for sub_qos in (0, 1, 2):
                c = client_on(node, unique_id(f"n{node}-{vname}-q{sub_qos}"), version)
                assert c.subscribe(topic, sub_qos) == [sub_qos]
                subs[(node, version, sub_qos)] = c
    # One filter from each of nodes 2 and 3 (a node tells its filter once, whatever the
    # number of its subscribers).
    cluster.wait_routes(1, 2)

    pub = client_on(1)
    for qos in (0, 1, 2):
        pub.publish(topic, f"qos {qos}".encode(), qos=qos)

    for c in subs.values():
        c.collector.wait(3)
    time.sleep(QUIET)  # room for a duplicate to show up
    for (node, version, sub_qos), c in subs.items():
        expected = sorted((topic, f"qos {q}".encode(), min(q, sub_qos)) for q in (0, 1, 2))
        assert received(c) == expected, f"node {node} {VERSIONS[version]} subscription QoS {sub_qos}"
        assert not any(m.retain for m in c.collector.messages)


def test_qos2_from_node_2_reaches_qos2_subscribers_on_node_1_once(cluster, client_on):
    topic = unique_id("cl-q2") + "/back"
    v5 = client_on(1, version=V5)
    v311 = client_on(1, version=V311)
    assert v5.subscribe(topic, 2) == [2]
    assert v311.subscribe(topic, 2) == [2]
    cluster.wait_routes(2, 1)

    pub = client_on(2, version=V5)
    pub.publish(topic, b"exactly once", qos=2)
    for c in (v5, v311):
        c.collector.wait_one()
    time.sleep(QUIET)
    for c in (v5, v311):
        assert received(c) == [(topic, b"exactly once", 2)], VERSIONS[c.version]


def test_a_burst_of_qos1_messages_arrives_in_order_once_on_each_node(cluster, client_on):
    """50 QoS 1 messages from one publisher on node 3: every one, once and in the order
    published (an ordered topic, MQTT 4.6), on nodes 1 and 2."""
    n = 50
    topic = unique_id("cl-burst") + "/t"
    on1 = client_on(1, version=V5)
    on2 = client_on(2, version=V311)
    assert on1.subscribe(topic, 1) == [1]
    assert on2.subscribe(topic, 1) == [1]
    cluster.wait_routes(3, 2)

    pub = client_on(3, version=V5)
    payloads = [f"m{i:03}".encode() for i in range(n)]
    for p in payloads:
        pub.publish(topic, p, qos=1)
    for c in (on1, on2):
        c.collector.wait(n)
    time.sleep(QUIET)
    for c in (on1, on2):
        msgs = c.collector.messages
        assert [m.payload for m in msgs] == payloads, VERSIONS[c.version]
        assert {(m.topic, m.qos) for m in msgs} == {(topic, 1)}


def test_v5_properties_and_a_topic_alias_cross_nodes(cluster, client_on):
    """A v5 publish's properties reach a subscriber on another node as on one node (MQTT
    3.3.2.3: user properties in order, content type, response topic, correlation data,
    payload format, the remaining message expiry), with the subscriber's own subscription
    identifier; a publish that names its topic by an alias reaches it with the topic."""
    topic = unique_id("cl-props") + "/t"
    sub = client_on(2)
    assert sub.subscribe(topic, 2, sub_id=77) == [2]
    cluster.wait_routes(1, 1)

    pub = client_on(1)
    user = [("a", "1"), ("b", "two"), ("a", "again"), ("ünï", "cödé")]
    pub.publish(
        topic,
        b'{"k": 1}',
        qos=1,
        properties=publish_props(
            UserProperty=user,
            ContentType="application/json",
            ResponseTopic="responses/for/me",
            CorrelationData=b"\x00\xffcorr",
            PayloadFormatIndicator=1,
            MessageExpiryInterval=120,
        ),
    )
    m = sub.collector.wait_one()
    assert (m.topic, m.payload, m.qos) == (topic, b'{"k": 1}', 1)
    assert m.prop("UserProperty") == user
    assert m.prop("ContentType") == "application/json"
    assert m.prop("ResponseTopic") == "responses/for/me"
    assert m.prop("CorrelationData") == b"\x00\xffcorr"
    assert m.prop("PayloadFormatIndicator") == 1
    exp = m.prop("MessageExpiryInterval")
    assert exp is not None and 115 <= exp <= 120, exp
    assert m.prop("SubscriptionIdentifier") == [77]

    # Starling accepts topic aliases (64 by default).
    assert getattr(pub.connack.properties, "TopicAliasMaximum", 0) >= 1
    pub.publish(topic, b"alias set", qos=1, properties=publish_props(TopicAlias=1))
    pub.publish("", b"alias used", qos=1, properties=publish_props(TopicAlias=1))
    msgs = sub.collector.wait(3)
    assert [(x.topic, x.payload) for x in msgs[1:]] == [(topic, b"alias set"), (topic, b"alias used")]
    # The subscriber allowed no aliases (Topic Alias Maximum 0): none is sent to it.
    assert all(x.prop("TopicAlias") is None for x in msgs)
    time.sleep(QUIET)
    assert len(sub.collector) == 3, [(x.topic, x.payload) for x in sub.collector.messages]


# --- wildcards -----------------------------------------------------------------------


def test_wildcards_match_across_nodes(cluster, client_on):
    """`+` and `#` filters on nodes 2 and 3 against topics published on node 1: each
    subscriber gets exactly the topics its filter matches (MQTT 4.7.1), once; `a/#` also
    matches `a` itself."""
    root = unique_id("cl-wild")
    plus = client_on(2, version=V5)  # root/+/t
    lead = client_on(2, version=V311)  # +/a/t
    hashed = client_on(3, version=V311)  # root/#
    both = client_on(3, version=V5)  # root/+/#
    assert plus.subscribe(f"{root}/+/t", 1) == [1]
    assert lead.subscribe("+/a/t", 1) == [1]
    assert hashed.subscribe(f"{root}/#", 1) == [1]
    assert both.subscribe(f"{root}/+/#", 1) == [1]
    cluster.wait_routes(1, 4)

    topics = [
        f"{root}/a/t",
        f"{root}/b/t",
        f"{root}/a/b/t",
        f"{root}/a/u",
        root,
        f"{root}/a",
        f"{root}-x/a/t",
    ]
    pub = client_on(1)
    for t in topics:
        pub.publish(t, t.encode(), qos=1)

    expected = {
        plus: [f"{root}/a/t", f"{root}/b/t"],
        lead: [f"{root}/a/t", f"{root}-x/a/t"],
        hashed: [f"{root}/a/t", f"{root}/b/t", f"{root}/a/b/t", f"{root}/a/u", root, f"{root}/a"],
        both: [f"{root}/a/t", f"{root}/b/t", f"{root}/a/b/t", f"{root}/a/u", f"{root}/a"],
    }
    for c, want in expected.items():
        c.collector.wait(len(want))
    time.sleep(QUIET)
    for c, want in expected.items():
        assert received(c) == sorted((t, t.encode(), 1) for t in want), c.client_id


def test_dollar_topics_are_not_matched_by_a_leading_wildcard_on_another_node(cluster, client_on):
    """MQTT 4.7.2: `#` and `+/...` do not match a topic starting with `$`. A `$` topic
    published on node 1 reaches a `$.../#` subscriber on node 3, and neither a `#` subscriber
    on node 2 (a node whose only filter is `#`) nor a `+/leaf` subscriber on node 3 (a node
    the message does reach), nor a local `#` subscriber on node 1."""
    uid = unique_id("cl-dollar")
    leaf = uid + "-leaf"
    dollar_topic = f"$app-{uid}/{leaf}"
    plain_topic = f"app-{uid}/{leaf}"

    everything = client_on(2, version=V5)
    assert everything.subscribe("#", 1) == [1]
    everything311 = client_on(2, version=V311)
    assert everything311.subscribe("#", 1) == [1]
    plus = client_on(3, version=V311)
    assert plus.subscribe(f"+/{leaf}", 1) == [1]
    dollar = client_on(3, version=V5)
    assert dollar.subscribe(f"$app-{uid}/#", 1) == [1]
    local = client_on(1, version=V5)
    assert local.subscribe("#", 1) == [1]
    # Node 2: "#" (told once for its two subscribers); node 3: two filters.
    cluster.wait_routes(1, 3)

    pub = client_on(1)
    pub.publish(dollar_topic, b"dollar", qos=1)
    assert dollar.collector.wait_one().topic == dollar_topic
    # A plain topic after it: the wildcard subscribers are live and get that.
    pub.publish(plain_topic, b"plain", qos=1)
    for c in (everything, everything311, plus, local):
        c.collector.wait_one(topic=plain_topic)
    time.sleep(QUIET)
    for c in (everything, everything311, plus, local):
        assert received(c) == [(plain_topic, b"plain", 1)], c.client_id
    assert received(dollar) == [(dollar_topic, b"dollar", 1)]


# --- client ids ----------------------------------------------------------------------


def test_a_client_id_connecting_on_node_2_takes_over_its_connection_on_node_1(cluster, client_on):
    """MQTT 5 3.1.4: the older connection of a client id gets DISCONNECT 0x8E (Session taken
    over), also when it is on another node; the newer one gets CONNACK success and works
    (a subscription on node 2 gets a publish from node 3)."""
    cid = unique_id("cl-mover")
    first = client_on(1, cid, V5)
    assert first.connack.rc == 0
    second = client_on(2, cid, V5)
    assert second.connack.rc == 0
    assert second.connack.session_present is False
    d = first.wait_disconnected()
    assert d.rc == 0x8E, f"expected Session taken over, got {d.reason_code!r}"
    # (paho's is_connected() stays True after a DISCONNECT from the server: look at the socket.)
    wait_for(lambda: first.c.socket() is None, what="the old connection to close")

    topic = unique_id("cl-moved") + "/t"
    assert second.subscribe(topic, 1) == [1]
    cluster.wait_routes(3, 1)
    pub = client_on(3)
    pub.publish(topic, b"to the new connection", qos=1)
    assert second.collector.wait_one().payload == b"to the new connection"
    time.sleep(QUIET)
    assert len(second.collector) == 1
    # The connection that was taken over stays closed, and got nothing.
    assert len(first.collector) == 0
    assert len(first.disconnects) == 1


def test_a_v311_client_id_connecting_on_node_1_closes_its_connection_on_node_3(cluster, client_on):
    """MQTT 3.1.1 3.1.4-2: the older connection of the client id, on another node, is closed."""
    cid = unique_id("cl-mover311")
    first = client_on(3, cid, V311)
    second = client_on(1, cid, V311)
    assert second.connack.rc == 0
    first.wait_disconnected()
    wait_for(lambda: first.c.socket() is None, what="the old connection to close")
    assert second.c.socket() is not None


def test_a_v311_persistent_session_moves_to_another_node_with_its_qos2_messages(cluster, client_on):
    """A 3.1.1 client with Clean Session 0 subscribed at QoS 2 on node 1 goes away; ten QoS 2
    messages published on node 3 wait in its session there. It comes back on node 2: CONNACK
    Session Present 1 (MQTT-3.2.2-2), the ten exactly once each at QoS 2 (MQTT 4.3.3), and
    what is published after the move reaches it on node 2."""
    cid = unique_id("cl-walker")
    topic = unique_id("cl-walk") + "/t"
    first = client_on(1, cid, V311, clean=False)
    assert first.subscribe(topic, 2) == [2]
    cluster.wait_routes(3, 1)
    first.disconnect()
    pub = client_on(3)
    sent = [f"m{i}".encode() for i in range(10)]
    for payload in sent:
        pub.publish(topic, payload, qos=2)

    back = client_on(2, cid, V311, clean=False)
    assert back.connack.session_present is True
    back.collector.wait(10)
    pub.publish(topic, b"after the move", qos=2)
    back.collector.wait(11)
    time.sleep(QUIET)  # room for a duplicate to show up
    got = [m.payload for m in back.collector.messages]
    assert sorted(got) == sorted(sent + [b"after the move"])
    assert all(m.qos == 2 for m in back.collector.messages)
    back.disconnect()
    # A clean session ends the persistent one, so that no filter is left for the next test.
    client_on(2, cid, V311, clean=True)


# --- the admin API -------------------------------------------------------------------


def test_every_node_shows_three_members_and_the_same_leader(cluster):
    leader, statuses = cluster.settled()
    assert leader in NODE_IDS
    roles = Counter(s["role"] for s in statuses.values())
    assert roles == Counter({"leader": 1, "follower": 2}), statuses
    assert statuses[leader]["role"] == "leader"
    for n, s in statuses.items():
        assert s["enabled"] is True
        assert s["node_id"] == n
        assert s["leader"] == leader
        assert s["announced"] is True
        assert s["incarnation"] == 1, s  # a fresh data dir: the first life
        members = {m["id"]: m for m in s["members"]}
        assert sorted(members) == list(NODE_IDS), s
        for m_id, m in members.items():
            node = cluster[m_id]
            assert m["voter"] is True, s
            assert m["addr"] == f"{node.ip}:{node.cluster_port}", s
            assert m["incarnation"] == 1, s
        assert sorted(p["id"] for p in s["peers"]) == [i for i in NODE_IDS if i != n], s
    # One term: the followers follow the leader's.
    assert len({s["term"] for s in statuses.values()}) == 1, statuses


# --- the messages between nodes ------------------------------------------------------

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
SERVICE = "/starling.cluster.v1.Cluster"


def cluster_proto(stubs: Path):
    """cluster_pb2 and cluster_pb2_grpc, generated from the published proto file by
    grpc_tools.protoc."""
    stubs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={stubs}",
            f"--grpc_python_out={stubs}",
            str(PROTO_DIR / "starling" / "cluster" / "v1" / "cluster.proto"),
        ],
        check=True,
        timeout=60,
    )
    sys.path.insert(0, str(stubs))
    try:
        from starling.cluster.v1 import cluster_pb2, cluster_pb2_grpc  # noqa: E402
    finally:
        sys.path.remove(str(stubs))
    return cluster_pb2, cluster_pb2_grpc


def test_a_peer_calling_the_published_service_is_answered_in_it(cluster, tmp_path):
    import grpc

    pb, rpc = cluster_proto(tmp_path / "stubs")
    leader, _ = cluster.settled()
    follower = next(n for n in NODE_IDS if n != leader)
    for n in (leader, follower):
        node = cluster[n]
        with grpc.insecure_channel(f"{node.ip}:{node.cluster_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            # Filters from node 99, which is no member: refused as such. The update carries a
            # field this version does not know (number 15), as a newer node's could.
            update = pb.RoutesUpdate(
                snapshot=pb.RoutesUpdate.Snapshot(node=99, incarnation=1, seq=1, filters=["a/#"])
            )
            routes = channel.unary_unary(
                f"{SERVICE}/Routes",
                request_serializer=lambda b: b,
                response_deserializer=pb.RoutesReply.FromString,
            )
            reply = routes(update.SerializeToString() + bytes([15 << 3, 42]), timeout=TIMEOUT)
            assert reply.result == pb.RoutesReply.NOT_MEMBER, reply

            # Removing node 99, through the generated stub: refused, with the reason.
            stub = rpc.ClusterStub(channel)
            change = pb.MembersChange(remove=pb.MembersChange.Remove(id=99))
            reply = stub.ChangeMembers(change, timeout=TIMEOUT)
            assert reply.WhichOneof("result") == "failed", reply
            assert "node 99 is not a member" in reply.failed, reply

            # A proposal that is no command (field 1 of the wrong type): refused as such.
            propose = channel.unary_unary(
                f"{SERVICE}/Propose",
                request_serializer=lambda b: b,
                response_deserializer=pb.ProposeReply.FromString,
            )
            with pytest.raises(grpc.RpcError) as refused:
                propose(bytes([1 << 3, 5]), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value

            # Asked to compress, grpcio does not: the node advertises no encoding.
            reply = stub.ChangeMembers(change, timeout=TIMEOUT, compression=grpc.Compression.Gzip)
            assert reply.WhichOneof("result") == "failed", reply

            # A message over 16 MiB: refused from its length, before it is read.
            with pytest.raises(grpc.RpcError) as large:
                propose(bytes(16 * 1024 * 1024 + 1), timeout=TIMEOUT)
            assert large.value.code() == grpc.StatusCode.OUT_OF_RANGE, large.value

            # A method the service does not have.
            nothing = channel.unary_unary(
                f"{SERVICE}/Nothing",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as unknown:
                nothing(b"", timeout=TIMEOUT)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED, unknown.value
    # Nothing of it was kept: node 99 is no member anywhere, no route of it is known.
    for n in NODE_IDS:
        s = cluster.status(n)
        assert s is not None and 99 not in {m["id"] for m in s["members"]}, s
        assert s["remote_routes"] == 0, s


def test_a_node_of_the_build_before_grpc_is_refused(cluster):
    node = cluster[1]
    # A frame of that build: length (u32, big-endian), frame version 2, kind 5 (routes), body.
    old_frame = (3).to_bytes(4, "big") + bytes([2, 5, 0])
    with socket.create_connection((node.ip, node.cluster_port), timeout=TIMEOUT) as s:
        s.sendall(old_frame)
        # The node closes the connection: not HTTP/2 (perhaps with an HTTP/2 GOAWAY first,
        # never with a reply frame of the old build).
        got = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"the node kept the connection open; it sent {got!r}")
            if not chunk:
                break
            got += chunk
        else:
            raise AssertionError(f"the node kept the connection open; it sent {got!r}")
        assert not got.startswith(old_frame[:4]), got
    cluster.settled()
