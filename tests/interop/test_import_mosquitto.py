"""``starling import-mosquitto`` against the real thing: a mosquitto.conf with a listener, a
password file made by ``mosquitto_passwd``, an ACL file with anonymous, user and pattern
rules, and ``allow_anonymous false`` runs the real mosquitto broker; Starling runs with the
config imported from it. The same matrix of connections (user, password), publishes and
subscriptions runs against both, and every outcome (connection accepted or refused, message
delivered or not) must be the same.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HOST, free_port, port_accepts
from helpers import QUIET, TIMEOUT, V311, Client, MosquittoSub

pytestmark = pytest.mark.starling_only

USERS = {"alice": "alice-pw", "bob": "bob-pw", "admin": "admin-pw"}

# Topic rules before the first `user` line are for anonymous clients only; patterns apply to
# every user.
ACL = """\
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret

user bob
topic read sensors/#
topic write commands/bob

user admin
topic readwrite #

pattern readwrite users/%u/#
pattern write clients/%c/status
"""

# (case, username, password): whether the connection is accepted.
CONNECTS = [
    ("alice", "alice", "alice-pw", True),
    ("alice, wrong password", "alice", "bob-pw", False),
    ("alice, empty password", "alice", "", False),
    ("bob", "bob", "bob-pw", True),
    ("unknown user", "mallory", "alice-pw", False),
    ("anonymous", None, None, False),
]

# (user, topic): whether a publish by the user (client id "<user>-dev") reaches a subscriber
# allowed to read everything.
PUBLISHES = [
    ("alice", "sensors/temp", True),
    ("alice", "sensors/secret", False),
    ("alice", "commands/bob", False),
    ("alice", "public/news", False),
    ("alice", "users/alice/outbox", True),
    ("alice", "users/bob/outbox", False),
    ("alice", "clients/alice-dev/status", True),
    ("alice", "clients/bob-dev/status", False),
    ("bob", "sensors/temp", False),
    ("bob", "commands/bob", True),
    ("bob", "users/bob/outbox", True),
    ("bob", "clients/bob-dev/status", True),
]

# (user, filter, topic): whether the user, subscribed to the filter, gets a message published
# on the topic by a client allowed to write everywhere.
SUBSCRIBES = [
    ("alice", "sensors/#", "sensors/temp", True),
    ("alice", "sensors/#", "sensors/secret", False),
    ("alice", "public/news", "public/news", False),
    ("alice", "users/alice/inbox", "users/alice/inbox", True),
    ("alice", "users/bob/inbox", "users/bob/inbox", False),
    ("alice", "commands/bob", "commands/bob", False),
    ("bob", "sensors/#", "sensors/temp", True),
    ("bob", "sensors/#", "sensors/secret", True),
    ("bob", "commands/bob", "commands/bob", False),
    ("bob", "users/bob/inbox", "users/bob/inbox", True),
    ("bob", "clients/bob-sub/status", "clients/bob-sub/status", False),
]


def expected() -> dict:
    out = {("connect", c): ok for c, _, _, ok in CONNECTS}
    out.update({("publish", u, t): ok for u, t, ok in PUBLISHES})
    out.update({("subscribe", u, f, t): ok for u, f, t, ok in SUBSCRIBES})
    return out


def tool(name: str) -> str:
    exe = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if exe is None:
        pytest.skip(f"{name} not installed (scripts/install-test-deps.sh installs it)")
    return exe


class Process:
    """A broker process whose output goes to a log file; stopped at teardown."""

    def __init__(self, name: str, command: list[str], port: int, workdir: Path, env=None):
        self.name = name
        self.port = port
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=workdir, env=env,
            )
        deadline = time.monotonic() + 10
        while not port_accepts(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{name} did not start on port {port}:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def connect(port: int, user: str | None, password: str | None, client_id: str) -> Client:
    c = Client((HOST, port), client_id, V311, connect=False)
    if user is not None:
        c.c.username_pw_set(user, password)
    c.connect(expect_rc=None)
    return c


def run_matrix(port: int) -> dict:
    """Every case of the matrix against the broker on `port`: {case: outcome}."""
    results: dict = {}
    clients: list[Client] = []
    try:
        for case, user, password, _ in CONNECTS:
            c = connect(port, user, password, f"connect-{len(clients)}")
            clients.append(c)
            results[("connect", case)] = c.connack.rc == 0

        observer = connect(port, "admin", USERS["admin"], "admin-observer")
        clients.append(observer)
        assert observer.connack.rc == 0, "admin must connect"
        observer.subscribe("#", qos=1)

        publishers = {}
        for user in sorted({u for u, _, _ in PUBLISHES}):
            publishers[user] = connect(port, user, USERS[user], f"{user}-dev")
            clients.append(publishers[user])
        for user, topic, _ in PUBLISHES:
            info = publishers[user].c.publish(topic, f"pub:{user}:{topic}".encode(), qos=1)
            info.wait_for_publish(TIMEOUT)
        time.sleep(QUIET)
        seen = {(m.topic, m.payload) for m in observer.collector.messages}
        for user, topic, _ in PUBLISHES:
            results[("publish", user, topic)] = (topic, f"pub:{user}:{topic}".encode()) in seen

        subscribers = {}
        for user, flt, _, _ in SUBSCRIBES:
            if user not in subscribers:
                subscribers[user] = connect(port, user, USERS[user], f"{user}-sub")
                clients.append(subscribers[user])
            # The SUBACK's code is not compared: what counts is what is delivered.
            subscribers[user].subscribe(flt, qos=1)
        for topic in sorted({t for _, _, t, _ in SUBSCRIBES}):
            observer.publish(topic, f"sub:{topic}".encode(), qos=1)
        time.sleep(QUIET)
        for user, flt, topic, _ in SUBSCRIBES:
            got = subscribers[user].collector.messages
            results[("subscribe", user, flt, topic)] = any(
                m.topic == topic and m.payload == f"sub:{topic}".encode() for m in got
            )
    finally:
        for c in clients:
            c.close()
    return results


def test_the_imported_config_accepts_the_same_users_and_enforces_the_same_acls(tmp_path):
    mosquitto = tool("mosquitto")
    mosquitto_passwd = tool("mosquitto_passwd")
    starling = os.environ.get("STARLING_BIN")
    if not starling:
        pytest.fail("set STARLING_BIN to the starling binary")

    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        flags = ["-c", "-b"] if i == 0 else ["-b"]
        subprocess.run([mosquitto_passwd, *flags, str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    mosquitto_port = free_port()
    lines = [
        f"listener {mosquitto_port} {HOST}",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        "persistence false",
        "log_dest stderr",
    ]
    if os.geteuid() == 0:
        # Otherwise mosquitto switches to the 'mosquitto' user, who cannot read tmp_path.
        lines.append("user root")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")

    imported = tmp_path / "starling.toml"
    run = subprocess.run([starling, "import-mosquitto", str(conf), "-o", str(imported)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    text = imported.read_text()
    # Explicit: Starling's own default lets anonymous clients in on a loopback address.
    assert "allow_anonymous = false" in text, text
    assert f'password_file = "{passwd}"' in text and f'acl_file = "{acl}"' in text, text
    check = subprocess.run([starling, "check-config", str(imported)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and check.stdout.endswith(": OK\n"), check.stderr

    starling_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
    brokers = []
    try:
        brokers.append(Process("mosquitto", [mosquitto, "-c", str(conf)], mosquitto_port, tmp_path))
        # --bind replaces the address of the imported (first) listener.
        brokers.append(Process("starling", [
            starling, "serve", "--config", str(imported), "--bind", f"{HOST}:{starling_port}",
            "--http-bind", f"{HOST}:0", "--data-dir", str(tmp_path / "starling-data"),
        ], starling_port, tmp_path, env=env))
        reference = run_matrix(mosquitto_port)
        # The matrix means what it says: mosquitto itself gives the expected outcomes.
        assert reference == expected(), {
            k: v for k, v in reference.items() if expected().get(k) != v
        }
        outcome = run_matrix(starling_port)
        differences = {k: (reference[k], outcome.get(k)) for k in reference if outcome.get(k) != reference[k]}
        assert not differences, f"(mosquitto, starling) differ: {differences}"
    except BaseException:
        for b in brokers:
            print(f"--- {b.name} log ---\n{b.log()}")
        raise
    finally:
        for b in brokers:
            b.stop()


def test_an_imported_bridge_forwards_to_a_real_mosquitto(tmp_path):
    """A mosquitto.conf with a listener and a bridge (`topic sensors/# out 1 "" site-1/`) to a
    second, real mosquitto: Starling, run with the imported config, forwards what is published
    to it on sensors/x to the remote as site-1/sensors/x."""
    mosquitto = tool("mosquitto")
    mosquitto_pub = tool("mosquitto_pub")
    tool("mosquitto_sub")
    starling = os.environ.get("STARLING_BIN")
    if not starling:
        pytest.fail("set STARLING_BIN to the starling binary")

    remote_port = free_port()
    remote_lines = [
        f"listener {remote_port} {HOST}",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
    ]
    if os.geteuid() == 0:
        remote_lines.append("user root")
    remote_conf = tmp_path / "remote.conf"
    remote_conf.write_text("\n".join(remote_lines) + "\n")

    starling_port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {starling_port} {HOST}",
        "allow_anonymous true",
        "connection site-1",
        f"address {HOST}:{remote_port}",
        'topic sensors/# out 1 "" site-1/',
    ]) + "\n")
    imported = tmp_path / "starling.toml"
    run = subprocess.run([starling, "import-mosquitto", str(conf), "-o", str(imported)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    text = imported.read_text()
    assert "[[bridge]]" in text and 'name = "site-1"' in text, text
    # mosquitto's default protocol, written explicitly (Starling's own is MQTT 5).
    assert 'protocol = "mqttv311"' in text, text
    assert 'remote_prefix = "site-1/"' in text and "local_prefix" not in text, text
    # mosquitto's bridge notifications are listed as not carried over.
    assert "$SYS/broker/connection/" in run.stderr, run.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
    brokers = []
    sub = None
    try:
        brokers.append(Process("remote", [mosquitto, "-c", str(remote_conf)], remote_port, tmp_path))
        sub = MosquittoSub((HOST, remote_port), "-t", "site-1/#", "-q", "1")
        sub.wait_subscribed()
        brokers.append(Process("starling", [
            starling, "serve", "--config", str(imported),
            "--http-bind", f"{HOST}:0", "--data-dir", str(tmp_path / "starling-data"),
        ], starling_port, tmp_path, env=env))
        # The bridge is connected once the remote has seen its client id (<hostname>.site-1).
        deadline = time.monotonic() + 15
        while ".site-1" not in brokers[0].log():
            assert time.monotonic() < deadline, f"the bridge did not connect:\n{brokers[0].log()}"
            time.sleep(0.05)
        subprocess.run([mosquitto_pub, "-h", HOST, "-p", str(starling_port), "-q", "1",
                        "-t", "sensors/x", "-m", "hello"], check=True, capture_output=True, timeout=30)
        got = sub.wait_messages(1, timeout=10)
        assert [(m.topic, m.payload) for m in got] == [("site-1/sensors/x", b"hello")], got
        assert got[0].qos == 1
    except BaseException:
        for b in brokers:
            print(f"--- {b.name} log ---\n{b.log()}")
        if sub is not None:
            print("--- mosquitto_sub ---\n" + "\n".join(sub.lines))
        raise
    finally:
        if sub is not None:
            sub.close()
        for b in reversed(brokers):
            b.stop()
