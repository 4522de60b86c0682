"""Fixtures that start a broker for each test.

The broker under test is chosen by the environment:

* ``STARLING_BIN=path/to/starling``: runs
  ``$STARLING_BIN serve --bind 127.0.0.1:PORT --data-dir DIR``, with ``--config FILE``
  for a test marked ``@pytest.mark.broker_config(TOML)`` (its ``{workdir}`` is replaced by the
  test's directory; ``--bind`` replaces the address of the first listener).
* ``INTEROP_REFERENCE=mosquitto``: runs ``mosquitto -c CONF`` instead. This is
  used to check the suite itself against a known-good broker; tests marked
  ``starling_only`` are skipped then.

Each test gets a fresh broker on a free 127.0.0.1 port, so no state (retained
messages, sessions) leaks from one test to another.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import V5, Client, MosquittoSub

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_GRACE = 5.0


def reference_broker() -> str | None:
    ref = os.environ.get("INTEROP_REFERENCE", "").strip()
    return ref or None


def pytest_collection_modifyitems(config, items):
    if reference_broker() is None:
        return
    skip = pytest.mark.skip(reason="Starling-specific behaviour (reference broker run)")
    for item in items:
        if "starling_only" in item.keywords or "broker_config" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item so fixtures can tell, at teardown,
    # whether the test failed (and then print the broker's log).
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


# Ports handed out by free_port in this run: the kernel may offer a released port again, and
# a test that asks for several (a broker with many listeners and an HTTP port) must not get
# the same one twice.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and not one this run has handed out before."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free port that was not handed out already")


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerProcess:
    """One broker process on 127.0.0.1, with its own data dir and log file."""

    def __init__(self, workdir: Path, config: str | None = None):
        self.workdir = workdir
        self.config = config
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "broker.log"
        self.host = HOST
        self.port: int | None = None
        # The HTTP listener (metrics, admin API); Starling only.
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return (self.host, self.port)

    def command(self, port: int) -> list[str]:
        ref = reference_broker()
        if ref is None:
            binary = os.environ.get("STARLING_BIN")
            if not binary:
                pytest.fail(
                    "set STARLING_BIN to the starling binary "
                    "(or INTEROP_REFERENCE=mosquitto to check the suite against mosquitto)"
                )
            command = [
                binary,
                "serve",
                "--bind",
                f"{HOST}:{port}",
                "--data-dir",
                str(self.data_dir),
                "--http-bind",
                f"{HOST}:{self.http_port}",
            ]
            if self.config is not None:
                path = self.workdir / "starling.toml"
                path.write_text(self.config.replace("{workdir}", str(self.workdir)))
                command += ["--config", str(path)]
            return command
        if ref == "mosquitto":
            exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            conf = self.workdir / "mosquitto.conf"
            lines = [
                f"listener {port} {HOST}",
                "allow_anonymous true",
                "persistence false",
                "log_dest stderr",
                "log_type all",
            ]
            if os.geteuid() == 0:
                # Otherwise mosquitto switches to the 'mosquitto' user.
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            return [exe, "-c", str(conf)]
        pytest.fail(f"unknown INTEROP_REFERENCE={ref!r} (supported: mosquitto)")

    def start(self, port: int | None = None) -> None:
        """Starts the broker (on `port`, or a free one) and waits until it accepts TCP."""
        assert self.proc is None, "already running"
        last_error = ""
        for _attempt in range(3):
            p = port if port is not None else free_port()
            log = open(self.log_path, "ab")
            self.starts += 1
            log.write(f"==== start #{self.starts} on port {p} ====\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.command(p),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            log.close()
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if port_accepts(p):
                    self.proc, self.port = proc, p
                    return
                time.sleep(0.02)
            if proc.poll() is None:
                self._stop(proc)
                last_error = f"broker did not accept TCP on port {p} within {START_TIMEOUT}s"
                break
            last_error = f"broker exited with status {proc.returncode} before accepting TCP"
            if port is not None:
                break  # a fixed port was asked for: do not pick another
        pytest.fail(f"{last_error}\n--- broker log ---\n{self.log()}")

    @staticmethod
    def _stop(proc: subprocess.Popen) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_GRACE)
        return proc.returncode

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 5 s. Returns the exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        return self._stop(proc)

    def restart(self) -> None:
        """Stops the broker and starts it again on the same port and data dir."""
        port = self.port
        self.stop()
        self.start(port)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"


@pytest.fixture
def broker_process(request, tmp_path):
    """The broker as a process (for tests that restart it)."""
    marker = request.node.get_closest_marker("broker_config")
    b = BrokerProcess(tmp_path, marker.args[0] if marker else None)
    b.start()
    try:
        yield b
    finally:
        b.stop()
        failed = any(
            getattr(getattr(request.node, "rep_" + phase, None), "failed", False)
            for phase in ("setup", "call")
        )
        if failed:
            print(f"\n--- broker log ({b.log_path}) ---\n{b.log()}")


@pytest.fixture
def broker(broker_process):
    """A fresh broker for this test: yields (host, port)."""
    return broker_process.address


@pytest.fixture
def client(broker):
    """Factory for connected paho clients (see helpers.Client); all closed at teardown.

    Usage: ``c = client("id", V311, clean=False)``; ``connect=False`` to connect later."""
    made: list[Client] = []

    def make(client_id=None, version=V5, *, connect=True, expect_rc=0, **kwargs) -> Client:
        c = Client(broker, client_id, version, connect=False, **kwargs)
        made.append(c)
        if connect:
            c.connect(expect_rc=expect_rc)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def msub(broker):
    """Factory for running mosquitto_sub processes (helpers.MosquittoSub); all stopped at teardown."""
    made: list[MosquittoSub] = []

    def make(*args, **kwargs) -> MosquittoSub:
        s = MosquittoSub(broker, *args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
