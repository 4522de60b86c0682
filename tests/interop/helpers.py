"""Small helpers for talking to a broker: bounded waits, a message collector,
a paho-mqtt client wrapper that waits for acknowledgements, and runners for
mosquitto_pub / mosquitto_sub."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5

# How long to wait for something that should happen.
TIMEOUT = 5.0
# How long to watch for something that must NOT happen.
QUIET = 1.0

_ids = itertools.count(1)


def unique_id(prefix: str = "it") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns() % 1_000_000}"


def wait_for(pred: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.01, what: str = ""):
    """Polls `pred` until it returns a truthy value (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


def refused_publish(c, topic):
    """Publishes QoS 1 on paho client `c` (a helpers.Client) to a topic the broker refuses;
    returns the PUBACK's (reason code, properties)."""
    info = c.c.publish(topic, b"x", qos=1)
    info.wait_for_publish(TIMEOUT)

    def ack():
        with c._lock:
            return next(((rc, p) for mid, rc, p in c.publish_acks if mid == info.mid), None)

    return wait_for(ack, what="PUBACK")


def props(packet_type: int, **values) -> Properties:
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def publish_props(**values) -> Properties:
    return props(PacketTypes.PUBLISH, **values)


def prop(properties: Properties | None, name: str, default=None):
    """A property's value, or `default` when absent."""
    if properties is None:
        return default
    return getattr(properties, name, default)


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None = None
    mid: int = 0

    def prop(self, name: str, default=None):
        return prop(self.properties, name, default)


class Collector:
    """Thread-safe list of received messages with bounded waits."""

    def __init__(self):
        self._cond = threading.Condition()
        self._msgs: list[Msg] = []

    def add(self, msg: Msg) -> None:
        with self._cond:
            self._msgs.append(msg)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Msg]:
        with self._cond:
            return list(self._msgs)

    def __len__(self) -> int:
        with self._cond:
            return len(self._msgs)

    def clear(self) -> None:
        with self._cond:
            self._msgs.clear()

    def matching(self, topic: str | None = None) -> list[Msg]:
        return [m for m in self.messages if topic is None or m.topic == topic]

    def wait(self, n: int = 1, topic: str | None = None, timeout: float = TIMEOUT) -> list[Msg]:
        """Waits until at least `n` messages (on `topic`, if given) have arrived; returns them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for m in self._msgs if topic is None or m.topic == topic]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s: wanted {n} message(s)"
                        f"{' on ' + repr(topic) if topic else ''}, got {len(got)}: "
                        f"{[(m.topic, m.payload) for m in self._msgs]}"
                    )
                self._cond.wait(left)

    def wait_one(self, topic: str | None = None, timeout: float = TIMEOUT) -> Msg:
        return self.wait(1, topic, timeout)[0]

    def expect_none(self, topic: str | None = None, quiet: float = QUIET) -> None:
        """Asserts that no message (on `topic`, if given) arrives during `quiet` seconds."""
        time.sleep(quiet)
        got = self.matching(topic)
        assert not got, f"unexpected message(s): {[(m.topic, m.payload) for m in got]}"


@dataclass
class Connack:
    session_present: bool
    reason_code: ReasonCode
    properties: Properties | None

    @property
    def rc(self) -> int:
        return self.reason_code.value


@dataclass
class Disconnect:
    reason_code: ReasonCode
    properties: Properties | None

    @property
    def rc(self) -> int:
        return self.reason_code.value


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    result: Any = None


class Client:
    """A paho-mqtt client (callback API v2) on its own network thread, whose
    operations wait (bounded) for the broker's acknowledgement."""

    def __init__(
        self,
        broker: tuple[str, int],
        client_id: str | None = None,
        version: int = V5,
        *,
        clean: bool = True,
        session_expiry: int | None = None,
        will: dict | None = None,
        connect_props: Properties | None = None,
        keepalive: int = 60,
        connect: bool = True,
        expect_rc: int | None = 0,
        manual_ack: bool = False,
    ):
        self.broker = broker
        self.version = version
        self.client_id = unique_id() if client_id is None else client_id
        self.clean = clean
        self.session_expiry = session_expiry
        self.connect_props = connect_props
        self.keepalive = keepalive
        self.collector = Collector()
        self.connacks: list[Connack] = []
        self.disconnects: list[Disconnect] = []
        self._connack_evt = threading.Event()
        self._disconnect_evt = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._dropped = False
        # (mid, reason code, properties) of each acknowledged QoS 1/2 publish (v5).
        self.publish_acks: list[tuple[int, ReasonCode, Properties | None]] = []

        kwargs = {}
        if version != V5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=version,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            **kwargs,
        )
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        if will is not None:
            self.c.will_set(
                will["topic"],
                will.get("payload"),
                qos=will.get("qos", 0),
                retain=will.get("retain", False),
                properties=will.get("properties"),
            )
        if connect:
            self.connect(expect_rc=expect_rc)

    # --- callbacks (network thread) ---
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connacks.append(Connack(bool(flags.session_present), reason_code, properties))
        self._connack_evt.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnects.append(Disconnect(reason_code, properties))
        self._disconnect_evt.set()

    def _on_message(self, client, userdata, message):
        self.collector.add(
            Msg(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=message.qos,
                retain=bool(message.retain),
                properties=getattr(message, "properties", None),
                mid=message.mid,
            )
        )

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            self.publish_acks.append((mid, reason_code, properties))

    def _complete(self, mid, result):
        with self._lock:
            pending = self._pending.setdefault(mid, _Pending())
        pending.result = result
        pending.event.set()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        self._complete(mid, (list(reason_code_list), properties))

    def _on_unsubscribe(self, client, userdata, mid, reason_code_list, properties):
        self._complete(mid, (list(reason_code_list), properties))

    def _wait_mid(self, mid: int, what: str, timeout: float = TIMEOUT):
        with self._lock:
            pending = self._pending.setdefault(mid, _Pending())
        if not pending.event.wait(timeout):
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (mid {mid})")
        with self._lock:
            self._pending.pop(mid, None)
        return pending.result

    # --- operations ---
    @property
    def connack(self) -> Connack:
        assert self.connacks, "no CONNACK received"
        return self.connacks[-1]

    def connect(self, expect_rc: int | None = 0, timeout: float = TIMEOUT) -> Connack:
        """Connects and waits for CONNACK; asserts its reason code is `expect_rc` unless None."""
        self._connack_evt.clear()
        self._disconnect_evt.clear()
        kwargs: dict[str, Any] = {}
        if self.version == V5:
            kwargs["clean_start"] = self.clean
            p = self.connect_props
            if self.session_expiry is not None:
                p = p or props(PacketTypes.CONNECT)
                p.SessionExpiryInterval = self.session_expiry
            if p is not None:
                kwargs["properties"] = p
        host, port = self.broker
        self.c.connect(host, port, keepalive=self.keepalive, **kwargs)
        self.c.loop_start()
        if not self._connack_evt.wait(timeout):
            raise AssertionError(f"no CONNACK within {timeout}s for {self.client_id}")
        ack = self.connack
        if expect_rc is not None:
            assert ack.rc == expect_rc, f"CONNACK reason {ack.reason_code!r} ({ack.rc:#x})"
        return ack

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        sub_id: int | None = None,
        properties: Properties | None = None,
    ) -> list[int]:
        """Subscribes and waits for SUBACK; returns the reason codes (granted QoS) as ints."""
        if self.version == V5:
            opts = SubscribeOptions(
                qos=qos,
                noLocal=no_local,
                retainAsPublished=retain_as_published,
                retainHandling=retain_handling,
            )
            if sub_id is not None:
                properties = properties or props(PacketTypes.SUBSCRIBE)
                properties.SubscriptionIdentifier = sub_id
            rc, mid = self.c.subscribe(topic, options=opts, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        codes, _props = self._wait_mid(mid, f"SUBACK for {topic!r}")
        return [c.value for c in codes]

    def unsubscribe(self, topic: str) -> list[int]:
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe failed locally: {rc}"
        codes, _props = self._wait_mid(mid, f"UNSUBACK for {topic!r}")
        return [c.value for c in codes]

    def publish(
        self,
        topic: str,
        payload: bytes | str | None = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = TIMEOUT,
    ) -> mqtt.MQTTMessageInfo:
        """Publishes; for QoS 1/2 waits until the broker has acknowledged it."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if qos > 0:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"no acknowledgement for QoS {qos} publish to {topic!r}"
        return info

    def disconnect(self, reason: int | None = None, properties: Properties | None = None) -> None:
        """Sends DISCONNECT (v5: with `reason`) and waits for the connection to close."""
        kwargs: dict[str, Any] = {}
        if reason is not None:
            kwargs["reasoncode"] = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
        if properties is not None:
            kwargs["properties"] = properties
        self.c.disconnect(**kwargs)
        self._disconnect_evt.wait(TIMEOUT)
        self.c.loop_stop()

    def drop(self) -> None:
        """Closes the socket abruptly, with no DISCONNECT packet."""
        self._dropped = True
        sock = self.c.socket()
        if sock is not None:
            try:
                # The network thread sees the connection end and stops (no reconnect).
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.c.loop_stop()
        if sock is not None:
            sock.close()

    def wait_disconnected(self, timeout: float = TIMEOUT) -> Disconnect:
        if not self._disconnect_evt.wait(timeout):
            raise AssertionError(f"{self.client_id} was not disconnected within {timeout}s")
        return self.disconnects[-1]

    def close(self) -> None:
        """Best-effort cleanup at the end of a test."""
        try:
            if self.c.is_connected() and not self._dropped:
                self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


# --- mosquitto command-line clients ------------------------------------------------


def mosquitto_pub(broker: tuple[str, int], *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    host, port = broker
    exe = shutil.which("mosquitto_pub")
    assert exe, "mosquitto_pub not found (run scripts/install-test-deps.sh)"
    cmd = [exe, "-h", host, "-p", str(port), *args]
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}: {res.stderr.decode(errors='replace')}"
    return res


@dataclass
class SubLine:
    topic: str
    qos: int
    retain: bool
    payload: bytes


class MosquittoSub:
    """A running mosquitto_sub printing each message as MSG|topic|qos|retain|hexpayload.

    Runs with -d so that the moment its subscription is acknowledged is visible."""

    FORMAT = "MSG|%t|%q|%r|%x"

    def __init__(self, broker: tuple[str, int], *args: str, client_id: str | None = None):
        host, port = broker
        exe = shutil.which("mosquitto_sub")
        assert exe, "mosquitto_sub not found (run scripts/install-test-deps.sh)"
        self.client_id = client_id or unique_id("msub")
        self.cmd = [exe, "-h", host, "-p", str(port), "-i", self.client_id, "-d", "-F", self.FORMAT, *args]
        # Its stdout is a pipe: make it line-buffered so debug lines arrive as they happen.
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            self.cmd = [stdbuf, "-oL", *self.cmd]
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait_lines(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = pred(self.lines)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"mosquitto_sub: {what} not seen within {timeout}s "
                        f"(exit {self.proc.poll()}); output:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.1))

    def wait_subscribed(self, timeout: float = TIMEOUT) -> None:
        self._wait_lines(lambda ls: any("received SUBACK" in l for l in ls), timeout, "SUBACK")

    def messages(self) -> list[SubLine]:
        with self._cond:
            lines = list(self.lines)
        out = []
        for l in lines:
            if l.startswith("MSG|"):
                _, rest = l.split("|", 1)
                topic, qos, retain, hexpayload = rest.rsplit("|", 3)
                out.append(SubLine(topic, int(qos), retain == "1", bytes.fromhex(hexpayload)))
        return out

    def wait_messages(self, n: int = 1, timeout: float = TIMEOUT) -> list[SubLine]:
        self._wait_lines(
            lambda ls: sum(1 for l in ls if l.startswith("MSG|")) >= n, timeout, f"{n} message(s)"
        )
        return self.messages()

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Waits for the process to exit and for all of its output to be read."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"mosquitto_sub did not exit within {timeout}s; output:\n" + "\n".join(self.lines)
            ) from None
        self._reader.join(timeout=TIMEOUT)
        return rc

    def kill(self) -> None:
        """SIGKILL: the client disappears without a DISCONNECT."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)

