"""Medians of bench/queue.sh's runs per scenario and variant, with each variant's ratio to
the baseline (delivered messages per second, and per broker CPU-second).

    python3 bench/queue-report.py bench/queue.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict

LABELS = ["baseline", "session", "subscription", "subscription-priority"]

runs = defaultdict(list)
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "scenario" in r:
            runs[(r["scenario"], r["broker"])].append(r)

scenarios = sorted({s for s, _ in runs}, key=["fan-in", "fan-out-qos0", "fan-out-qos1"].index)
print("| scenario | " + " | ".join(LABELS) + " |")
print("| --- |" + " ---: |" * len(LABELS))
for metric, key in [("msg/s", "rate_median_per_s"), ("msg/CPU-s", "msgs_per_broker_cpu_s")]:
    for s in scenarios:
        med = {}
        for label in LABELS:
            vals = [r[key] for r in runs.get((s, label), []) if r.get(key)]
            med[label] = statistics.median(vals) if vals else None
        base = med["baseline"]
        cells = []
        for label in LABELS:
            v = med[label]
            if v is None:
                cells.append("-")
            elif label == "baseline" or not base:
                cells.append(f"{v:,.0f}")
            else:
                cells.append(f"{v:,.0f} ({v / base:.3f})")
        print(f"| {s}, {metric} | " + " | ".join(cells) + " |")
# The spread: each variant's runs as ratios to the baseline run of the same round.
print()
for s in scenarios:
    for label in LABELS[1:]:
        base = [r["rate_median_per_s"] for r in runs.get((s, "baseline"), [])]
        mine = [r["rate_median_per_s"] for r in runs.get((s, label), [])]
        pairs = [f"{m / b:.2f}" for b, m in zip(base, mine) if b]
        ratios = [r.get("delivery_ratio") for r in runs.get((s, label), [])]
        print(f"{s} {label}: per-round ratios {', '.join(pairs)}; delivery ratios {ratios}")
