"""What scraping /metrics costs the broker's throughput, measured within one run.

    python3 bench/http-paired.py [--duration 60] [--block 5] [--scenarios p2p-qos0,...]

Between separate runs the throughput on a shared machine can differ by a factor of two
(bench/RESULTS.md, "What the HTTP listener costs"), which hides a 3 % effect. Here one broker
(HTTP listener on) runs one load for `--duration` seconds, pinned as in bench/compare.sh, and a
scraper reads /metrics once a second during every other block of `--block` seconds: the
generator's per-second rates are then compared block against neighbouring block. Prints, per
scenario, the mean rate with and without scraping, their ratio, and the spread of the
block-pair ratios. `--path none` runs the same alternation without a request (what the
method itself reads into the blocks); `--path /healthz` a request without the metrics walk.
Needs the release build (bench/lib.sh builds it); traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def prio() -> list[str]:
    chrt = shutil.which("chrt")
    if chrt and subprocess.run([chrt, "-r", "1", "true"], capture_output=True).returncode == 0:
        return [chrt, "-r", "1"]
    return []


def wait_port(port: int) -> None:
    import socket
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def run(scenario: str, duration: int, block: int, port: int, path: str) -> dict:
    work = tempfile.mkdtemp(prefix="starling-http-paired.")
    conf = os.path.join(work, "s.toml")
    with open(conf, "w") as f:
        f.write(f'[[listener]]\nbind = "127.0.0.1:{port}"\n[http]\nbind = "127.0.0.1:{port + 1}"\n'
                '[limits]\nmax_inflight = 1000\nmax_queued_messages = 1000000\n'
                'max_queued_bytes = 4294967296\n[storage]\ndurability = "memory"\n')
    broker = subprocess.Popen(["taskset", "-c", "0", *prio(), os.path.join(BIN, "starling"), "serve",
                               "--config", conf, "--data-dir", os.path.join(work, "data")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_port(port)
        wait_port(port + 1)
        warmup = 3
        gen = subprocess.Popen(["taskset", "-c", "1", *prio(), os.path.join(BIN, "starling-bench"),
                                "--port", str(port), "--scenario", scenario, "--broker-pid",
                                str(broker.pid), "--warmup", str(warmup), "--duration", str(duration)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        scrapes = []
        stop = threading.Event()

        def scraper() -> None:
            start = time.monotonic() + warmup + 0.5  # roughly when measuring starts
            while not stop.is_set():
                t = time.monotonic() - start
                if t >= duration:
                    return
                second = int(t) if t >= 0 else -1
                if second >= 0 and (second // block) % 2 == 1:
                    if path != "none":
                        urllib.request.urlopen(f"http://127.0.0.1:{port + 1}{path}", timeout=5).read()
                    scrapes.append(second)
                # Once a second, at the start of the second.
                time.sleep(max(0.0, (int(t) + 1) - t) if t >= 0 else -t)

        th = threading.Thread(target=scraper, daemon=True)
        th.start()
        out, _ = gen.communicate(timeout=duration + 120)
        stop.set()
        th.join(timeout=5)
        line = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    rates = line["rate_per_s"]
    on = [r for i, r in enumerate(rates) if (i // block) % 2 == 1]
    off = [r for i, r in enumerate(rates) if (i // block) % 2 == 0]
    # Each scraped block against the mean of its neighbours.
    pairs = []
    nblocks = len(rates) // block
    for b in range(1, nblocks, 2):
        mean = lambda k: statistics.mean(rates[k * block:(k + 1) * block])
        neighbours = [mean(k) for k in (b - 1, b + 1) if k < nblocks]
        pairs.append(mean(b) / statistics.mean(neighbours))
    return {
        "scenario": scenario,
        "path": path,
        "seconds": len(rates),
        "scrapes": len(scrapes),
        "mean_on": round(statistics.mean(on)),
        "mean_off": round(statistics.mean(off)),
        "ratio": round(statistics.mean(on) / statistics.mean(off), 4),
        "block_ratio_median": round(statistics.median(pairs), 4),
        "block_ratios": [round(p, 3) for p in pairs],
        "delivery_ratio": line.get("delivery_ratio"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--scenarios", default="p2p-qos0,fan-out-qos0,fan-out-qos1")
    ap.add_argument("--path", default="/metrics",
                    help="what the scraper reads: /metrics, /healthz (a control), none (a control)")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "starling", "-p", "starling-bench"],
                   cwd=ROOT, check=True)
    port = 27001
    for s in a.scenarios.split(","):
        print(json.dumps(run(s, a.duration, a.block, port, a.path)), flush=True)
        port += 2


if __name__ == "__main__":
    main()
