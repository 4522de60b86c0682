#!/usr/bin/env python3
"""Turns the JSON lines of bench/compare.sh into bench/RESULTS.md.

Medians over rounds per scenario and broker, Starling's ratio to each peer, a mark on every
figure with runs that did not qualify, every run in detail, and the machine. A section of an
existing RESULTS.md from "## Where Starling spends its time" on is kept as it is.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess

BROKERS = ["starling", "mosquitto", "rumqttd"]
KEPT_SECTION = "## Where Starling spends its time"

# (scenario, tag, label, field, unit, higher is better)
ROWS = [
    ("p2p-qos0", None, "1. p2p QoS 0, 10→10", "rate_median_per_s", "msg/s", True),
    ("p2p-qos0", None, "1. p2p QoS 0, efficiency", "msgs_per_broker_cpu_s", "msg/CPU-s", True),
    ("p2p-qos1", None, "2. p2p QoS 1, 10→10", "rate_median_per_s", "msg/s", True),
    ("p2p-qos1", None, "2. p2p QoS 1, efficiency", "msgs_per_broker_cpu_s", "msg/CPU-s", True),
    ("p2p-qos1", None, "2. p2p QoS 1, delivery ratio", "delivery_ratio", "", True),
    ("fan-in", None, "3. fan-in QoS 0, 10→1", "rate_median_per_s", "msg/s", True),
    ("fan-in", None, "3. fan-in, efficiency", "msgs_per_broker_cpu_s", "msg/CPU-s", True),
    ("fan-out-qos0", None, "4. fan-out QoS 0, 1→100", "rate_median_per_s", "deliveries/s", True),
    ("fan-out-qos0", None, "4. fan-out QoS 0, efficiency", "msgs_per_broker_cpu_s", "msg/CPU-s", True),
    ("fan-out-qos1", None, "4. fan-out QoS 1, 1→100", "rate_median_per_s", "deliveries/s", True),
    ("fan-out-qos1", None, "4. fan-out QoS 1, efficiency", "msgs_per_broker_cpu_s", "msg/CPU-s", True),
    ("fan-out-qos1", None, "4. fan-out QoS 1, delivery ratio", "delivery_ratio", "", True),
    ("latency", None, "5. latency at 10k msg/s QoS 1, p50", "latency_us.p50", "µs", False),
    ("latency", None, "5. latency, p99", "latency_us.p99", "µs", False),
    ("latency", None, "5. latency, p99.9", "latency_us.p999", "µs", False),
    ("latency", None, "5. latency, broker CPU", "broker_cpu_util", "CPU-s/s", False),
    ("connections", None, "6. 10,000 idle connections, connect rate", "connect_rate_per_s", "conn/s", True),
    ("connections", None, "6. broker RSS per idle connection", "rss_per_conn_bytes", "bytes", False),
    ("connections", "subscribed", "6. 10,000 subscribed, then idle: RSS per connection", "rss_per_conn_bytes", "bytes", False),
    ("connections", "50k", "6. 50,000 idle connections, connect rate", "connect_rate_per_s", "conn/s", True),
    ("connections", "50k", "6. 50,000: RSS per connection", "rss_per_conn_bytes", "bytes", False),
    ("retained", None, "7. 100,000 retained, `#` receives all", "receive_s", "s", False),
    ("retained", None, "7. retained, efficiency", "msgs_per_broker_cpu_s", "msg/CPU-s", True),
    ("large", None, "8. 1 MiB p2p QoS 1", "mb_per_s", "MB/s", True),
    ("large", None, "8. 1 MiB, efficiency", "msgs_per_broker_cpu_s", "msg/CPU-s", True),
    ("p2p-qos0", "unpinned", "1. p2p QoS 0, unpinned (1 run)", "rate_median_per_s", "msg/s", True),
]


def field(run, path):
    value = run
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 10 and v != int(v):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return f"{round(v):,}"


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return os.cpu_count(), model, mem, platform.release()


def med(rs, path):
    vs = [field(r, path) for r in rs]
    vs = [v for v in vs if isinstance(v, (int, float))]
    return statistics.median(vs) if vs else None


def targets(w, select):
    """The issue's targets for Starling, checked against the medians."""
    rows = []

    def vs_best(label, scenario, path, goal, lower_better=False):
        s = med(select(scenario, None, "starling"), path)
        peers = [(med(select(scenario, None, b), path), b) for b in ("mosquitto", "rumqttd")]
        peers = [p for p in peers if p[0] is not None]
        if s is None or not peers:
            return
        best = min(peers) if lower_better else max(peers)
        ratio = best[0] / s if lower_better else s / best[0]
        rows.append((label, f"{ratio:.2f}x {best[1]}", f"≥ {goal}x", ratio >= goal))

    vs_best("1. p2p QoS 0 msg/s", "p2p-qos0", "rate_median_per_s", 1.5)
    vs_best("2. p2p QoS 1 msg/s", "p2p-qos1", "rate_median_per_s", 1.5)
    vs_best("3. fan-in msg/s", "fan-in", "rate_median_per_s", 1.5)
    vs_best("4. fan-out QoS 0 deliveries/s", "fan-out-qos0", "rate_median_per_s", 1.2)
    vs_best("4. fan-out QoS 1 deliveries/s", "fan-out-qos1", "rate_median_per_s", 1.2)
    vs_best("7. retained: time to receive all", "retained", "receive_s", 1.0, lower_better=True)
    vs_best("8. 1 MiB MB/s", "large", "mb_per_s", 1.0)
    ratios = [field(r, "delivery_ratio") for sc in ("p2p-qos1", "fan-out-qos1", "latency", "large")
              for r in select(sc, None, "starling")]
    ratios = [v for v in ratios if isinstance(v, (int, float))]
    if ratios:
        rows.append(("delivery ratio at QoS 1 (lowest run)", f"{min(ratios):g}", "1.0",
                     min(ratios) >= 1.0))
    rss = med(select("connections", None, "starling"), "rss_per_conn_bytes")
    if rss is not None:
        rows.append(("RSS per idle connection", f"{rss:,.0f} B", "≤ 2,048 B", rss <= 2048))
    if not rows:
        return
    w("### Against the issue's targets\n")
    w("Starling against the better of mosquitto and rumqttd (\"better\" per metric).\n")
    w("| target | Starling | goal | met |")
    w("| --- | ---: | ---: | --- |")
    for label, got, goal, ok in rows:
        w(f"| {label} | {got} | {goal} | {'yes' if ok else 'no'} |")
    w("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out")
    for opt in ["command", "priority", "min-util", "rounds", "warmup", "measure", "elapsed",
                "nofile", "big-connections", "mosquitto", "rumqttd", "starling"]:
        ap.add_argument("--" + opt, default="")
    a = ap.parse_args()

    runs = []
    with open(a.raw) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))

    def select(scenario, tag, broker):
        return [r for r in runs if r.get("scenario") == scenario and r.get("tag") == tag
                and r.get("broker") == broker]

    out = []
    w = out.append
    nproc, model, mem, kernel = machine()
    w("# Benchmark results: Starling, mosquitto, rumqttd\n")
    w(f"Date: {datetime.date.today().isoformat()}. Machine: {nproc} cores ({model}), {mem}, "
      f"Linux {kernel}. Starling at commit {a.starling}; {a.mosquitto} (Debian package); "
      f"{a.rumqttd} (crates.io, without TLS/WebSocket features).\n")
    w(f"Command: `{a.command.strip()}` ({a.rounds} round(s), {a.warmup} s warm-up, "
      f"{a.measure} s measured, whole run {a.elapsed} s). Raw JSON lines: `bench/results.jsonl`.\n")
    w("## Medians\n")
    w("Median over rounds of each run's figure (for throughput, the run's figure is the median of "
      "its per-second delivered counts). \"S/m\" and \"S/r\" are Starling's ratio to mosquitto and "
      "to rumqttd: above 1 is better for Starling where higher is better (↑), below 1 where lower "
      "is better (↓). A figure marked * includes runs that did not qualify (count in brackets: "
      "qualifying/total).\n")
    w("| scenario | unit | starling | mosquitto | rumqttd | S/m | S/r |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for scenario, tag, label, path, unit, higher in ROWS:
        cells = {}
        for b in BROKERS:
            rs = select(scenario, tag, b)
            values = [field(r, path) for r in rs]
            values = [v for v in values if isinstance(v, (int, float))]
            if not rs:
                cells[b] = (None, "")
                continue
            q = sum(1 for r in rs if r.get("qualifies") is True)
            med = statistics.median(values) if values else None
            mark = "" if q == len(rs) else f" * ({q}/{len(rs)})"
            cells[b] = (med, mark)
        if all(cells[b][0] is None and cells[b][1] == "" for b in BROKERS):
            continue
        s = cells["starling"][0]

        def ratio(peer):
            p = cells[peer][0]
            if s is None or p in (None, 0):
                return "–"
            return f"{s / p:.2f}"

        arrow = "↑" if higher else "↓"
        w(f"| {label} | {unit} {arrow} | "
          + " | ".join(fmt(cells[b][0]) + cells[b][1] for b in BROKERS)
          + f" | {ratio('mosquitto')} | {ratio('rumqttd')} |")
    w("")
    targets(w, select)
    failed = [r for r in runs if "error" in r]
    if failed:
        w("Runs that failed: " + "; ".join(
            f"{r.get('scenario')} on {r.get('broker')} round {r.get('round')}: {r['error']}"
            for r in failed) + ".\n")

    check = os.path.join(os.path.dirname(os.path.abspath(a.raw)), "generator-check.jsonl")
    if os.path.exists(check):
        with open(check) as f:
            lines = [json.loads(x) for x in f if x.strip()]
        w("## Is the generator the bottleneck?\n")
        w("The same scenarios against `starling-bench forwarder`, a trivial forwarding server "
          "(exact topics, no sessions or queues), pinned and prioritised like the brokers. "
          "\"best broker\" is the highest median above; \"headroom\" is forwarder / best broker.\n")
        w("| scenario | forwarder | best broker | headroom | forwarder CPU | gen CPU |")
        w("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in lines:
            sc = r.get("scenario")
            key = "mb_per_s" if sc == "large" else "rate_median_per_s"
            meds = []
            for b in BROKERS:
                vs = [field(x, key) for x in select(sc, None, b)]
                vs = [v for v in vs if isinstance(v, (int, float))]
                if vs:
                    meds.append((statistics.median(vs), b))
            best = max(meds) if meds else (None, "")
            fv = field(r, key)
            head = f"{fv / best[0]:.1f}x" if best[0] and fv else "–"
            unit = " MB/s" if sc == "large" else "/s"
            w(f"| {sc} | {fmt(fv)}{unit} | {fmt(best[0])}{unit} ({best[1]}) | {head} | "
              f"{fmt(r.get('broker_cpu_util'))} | {fmt(r.get('gen_cpu_util'))} |")
        w("")

    method = os.path.join(os.path.dirname(os.path.abspath(__file__)), "METHOD.md")
    if os.path.exists(method):
        with open(method) as f:
            w(f.read().rstrip() + "\n")

    w("## Every run\n")
    w("`broker CPU` and `gen CPU` are CPU-seconds per second of the broker process and of the "
      "load generator over the measured window; `ok` is whether the run qualifies.\n")
    w("| scenario | broker | round | figure | broker CPU | gen CPU | delivery | p50 / p99 µs | RSS MiB | ok |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in runs:
        sc = r.get("scenario", "?") + (f" ({r['tag']})" if r.get("tag") else "")
        if "error" in r:
            w(f"| {sc} | {r.get('broker')} | {r.get('round')} | error: {r['error'][:80]} | | | | | | ✗ |")
            continue
        if r.get("scenario") == "connections":
            fig = (f"{fmt(r.get('connected'))} conn, {fmt(r.get('connect_rate_per_s'))}/s, "
                   f"{fmt(r.get('rss_per_conn_bytes'))} B/conn")
        elif r.get("scenario") == "retained":
            fig = f"{fmt(r.get('received'))} in {r.get('receive_s')} s"
        elif r.get("scenario") == "large":
            fig = f"{fmt(r.get('mb_per_s'))} MB/s"
        else:
            fig = f"{fmt(r.get('rate_median_per_s'))}/s"
        rss = r.get("broker_rss_kb")
        lat = r.get("latency_us") or {}
        latency = (f"{fmt(lat.get('p50'))} / {fmt(lat.get('p99'))}"
                   if lat.get("p50") is not None else "")
        w(f"| {sc} | {r.get('broker')} | {r.get('round', '')} | {fig} | "
          f"{fmt(r.get('broker_cpu_util'))} | {fmt(r.get('gen_cpu_util'))} | "
          f"{fmt(r.get('delivery_ratio'))} | {latency} | "
          f"{fmt(rss / 1024) if isinstance(rss, (int, float)) else '–'} | "
          f"{'✓' if r.get('qualifies') else '✗'} |")
    w("")

    kept = ""
    if os.path.exists(a.out):
        with open(a.out) as f:
            old = f.read()
        at = old.find(KEPT_SECTION)
        if at >= 0:
            kept += old[at:]
    text = "\n".join(out) + "\n" + kept
    with open(a.out, "w") as f:
        f.write(text.rstrip() + "\n")


if __name__ == "__main__":
    main()
