#!/usr/bin/env python3
"""Broker memory with messages queued for an offline persistent subscriber (durability `sync`).

    .venv/bin/python bench/offline-rss.py STARLING_BINARY [PORT] [MESSAGES] [PAYLOAD_BYTES]

Starts the binary on 127.0.0.1:PORT (default 24555) with a fresh data directory, pinned to core
0; a 3.1.1 subscriber with clean session 0 subscribes to q/# at QoS 1 and disconnects; a
publisher sends MESSAGES (default 40000) QoS 1 messages of PAYLOAD_BYTES (default 4096), 200
in flight, and waits for every PUBACK. Prints the time taken, the broker's RSS and the size of
the store file. Compare two binaries, or `[storage] cache_mib` values (environment variable
CACHE_MIB), run after run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    binary = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 24555
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 40_000
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
    work = tempfile.mkdtemp()
    config = os.path.join(work, "starling.toml")
    with open(config, "w") as f:
        f.write(
            'log_level = "warn"\n[limits]\nmax_queued_messages = 10000000\n'
            'max_queued_bytes = 8589934592\n[storage]\ndurability = "sync"\n'
        )
        if os.environ.get("CACHE_MIB"):
            f.write(f"cache_mib = {int(os.environ['CACHE_MIB'])}\n")
    data = os.path.join(work, "data")
    broker = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--config", config,
         "--bind", f"127.0.0.1:{port}", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="offline",
                          clean_session=False, protocol=mqtt.MQTTv311)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        sub.subscribe("q/#", 1)
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="publisher",
                          protocol=mqtt.MQTTv311)
        pub.max_inflight_messages_set(200)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        payload = b"x" * size
        start = time.time()
        sent = [pub.publish(f"q/{i % 100}", payload, qos=1) for i in range(count)]
        for info in sent:
            info.wait_for_publish(60)
        took = time.time() - start
        time.sleep(1)
        with open(f"/proc/{broker.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024
        store = os.path.getsize(os.path.join(data, "starling.redb")) >> 20
        print(f"{count} x {size} B queued in {took:.1f} s; broker RSS {rss} MiB; store {store} MiB")
        pub.disconnect()
        pub.loop_stop()
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
