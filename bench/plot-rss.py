#!/usr/bin/env python3
"""Draws the RSS of the broker over a mixed-load run (the `per_second` samples bench/mixed.sh
writes) as an SVG line chart, one line per broker, with no dependency beyond Python.

    python3 bench/plot-rss.py mixed-soak.jsonl bench/soak-rss.svg
"""
import json
import sys

W, H, PAD = 800, 360, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def main(src, dst):
    runs = [json.loads(line) for line in open(src) if line.strip()]
    series = [(r["broker"], r["broker_rss_mib"]["per_second"]) for r in runs]
    longest = max(len(s) for _, s in series)
    top = max(max(s) for _, s in series) * 1.1
    x = lambda i: PAD + (W - 2 * PAD) * i / max(longest - 1, 1)
    y = lambda v: H - PAD - (H - 2 * PAD) * v / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>',
           f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="black"/>']
    for k in range(5):
        v = top * k / 4
        out.append(f'<text x="{PAD - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    for k in range(5):
        i = (longest - 1) * k / 4
        out.append(f'<text x="{x(i):.1f}" y="{H - PAD + 16}" text-anchor="middle">'
                   f'{i / 60:.0f} min</text>')
    out.append(f'<text x="{PAD}" y="{PAD - 12}">RSS (MiB) over the run, one sample a second</text>')
    for n, (name, s) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        out.append(f'<text x="{W - PAD - 150}" y="{PAD + 16 * n}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
