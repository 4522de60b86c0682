#!/usr/bin/env python3
"""Summarises bench/latency.sh's JSON lines: per server, the median over rounds of each
latency percentile with its spread (lowest-highest), and each median's distance from the
forwarder's (the generator's floor) and ratio to mosquitto's.

    bench/latency-report.py FILE.jsonl
"""
import json
import statistics
import sys


def main(path):
    runs = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        runs.setdefault(r["broker"], []).append(r)
    keys = [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]
    med = {}
    print("| server | rounds | delivered | " + " | ".join(
        f"{label} µs (spread)" for _, label in keys) + " | CPU-s/s |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in keys) + " | ---: |")
    for server, rs in runs.items():
        cells = []
        med[server] = {}
        for k, _ in keys:
            vals = [r["latency_us"][k] for r in rs if r.get("latency_us", {}).get(k) is not None]
            if not vals:
                cells.append("-")
                continue
            m = statistics.median(vals)
            med[server][k] = m
            cells.append(f"{m:,.0f} ({min(vals):,.0f}-{max(vals):,.0f})")
        ratio = min(r.get("delivery_ratio", 0) for r in rs)
        cpu = statistics.median(r.get("broker_cpu_util", 0) for r in rs)
        print(f"| {server} | {len(rs)} | {ratio:.4f} | " + " | ".join(cells) + f" | {cpu:.3f} |")
    floor = med.get("forwarder", {})
    mosq = med.get("mosquitto", {})
    print()
    print("| server | " + " | ".join(f"{label} − forwarder µs | {label} / mosquitto"
                                     for _, label in keys) + " |")
    print("| --- | " + " | ".join("---: | ---:" for _ in keys) + " |")
    for server, m in med.items():
        if server == "forwarder":
            continue
        cells = []
        for k, _ in keys:
            d = f"{m[k] - floor[k]:+,.0f}" if k in m and k in floor else "-"
            q = f"{m[k] / mosq[k]:.2f}" if k in m and mosq.get(k) else "-"
            cells += [d, q]
        print(f"| {server} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/latency.jsonl")
