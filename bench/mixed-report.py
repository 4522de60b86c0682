#!/usr/bin/env python3
"""Turns the JSON lines of bench/mixed.sh into a Markdown table: per broker, the median over
rounds of the steady stream's latency percentiles, its delivery ratio (worst round), the
broker's CPU, its largest RSS, what it wrote to storage, and the load generator's own CPU for
the same traffic: a machine reading for the run (about 0.15 of a core when the host is quiet;
when it is loud, every process needs more CPU for the same work and every tail grows).

    python3 bench/mixed-report.py mixed.jsonl
"""
import json
import statistics
import sys


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def main(path):
    runs = {}
    order = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            name = d["broker"]
            if name not in runs:
                order.append(name)
            runs.setdefault(name, []).append(d)
    print("| broker | rounds | steady p50 / p99 / p99.9 (ms) | delivery ratio (worst) | lost "
          "| broker CPU | RSS max (MB) | written (MiB) | churn episodes/s | generator CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in order:
        rs = runs[name]
        lat = lambda q: median([r["steady"]["latency_ms"][q] for r in rs])
        ratio = min(r["steady"]["delivery_ratio"] for r in rs)
        lost = sum(r["steady"]["lost"] for r in rs)
        cpu = median([r["broker_cpu_util"] for r in rs])
        rss = median([r["broker_rss_mib"]["max"] for r in rs])
        written = median([r["broker_written_mib"] for r in rs])
        eps = median([r["churn"]["episodes_per_s"] for r in rs])
        gen = median([r.get("gen_cpu_util") for r in rs])
        print(f"| {name} | {len(rs)} | {fmt(lat('p50'), 2)} / {fmt(lat('p99'), 2)} / "
              f"{fmt(lat('p999'), 2)} | {ratio:.4f} | {lost} | {fmt(cpu, 2)} | {fmt(rss)} | "
              f"{fmt(written)} | {fmt(eps)} | {fmt(gen, 2)} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/mixed.jsonl")
