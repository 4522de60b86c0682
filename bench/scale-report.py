#!/usr/bin/env python3
"""Turns the JSON lines of bench/scale.sh into markdown tables (stdout) and plots.

    bench/scale-report.py [bench/scale.jsonl] [--plots DIR]   (default DIR: bench/)

One table and one PNG (DIR/scale-<curve>.png) per curve, and for each curve its growth,
computed from the points: the slope of log(cost) against log(work) by least squares, named
flat (|slope| < 0.1), logarithmic (0.1 to 0.35, or a better fit to a + b ln x than to a
power), sub-linear (to 0.8), linear (0.8 to 1.2) or worse than linear. matplotlib is needed
for the plots (bench/scale.sh installs it into .venv if missing); without it only the tables
are written.
"""

import argparse
import json
import math
import os
import sys

PEERS = ["starling", "mosquitto", "rumqttd"]


def get(d, path, default=None):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d or d[part] is None:
            return default
        d = d[part]
    return d


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def human(n):
    n = int(n)
    for unit, div in (("M", 1_000_000), ("k", 1000)):
        if n >= div and n % (div // 10 or 1) == 0:
            v = n / div
            return f"{v:g}{unit}"
    return str(n)


def size(n):
    n = int(n)
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def linfit(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss = sum((y - my) ** 2 for y in ys)
    res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return b, a, (1 - res / ss) if ss > 0 else 1.0


def growth(points):
    """(label, slope) of cost against work; points: [(work, cost)], cost > 0."""
    pts = [(x, y) for x, y in points if x and y and x > 0 and y > 0]
    if len(pts) < 3:
        return "too few points", None
    lx = [math.log(x) for x, _ in pts]
    ly = [math.log(y) for _, y in pts]
    slope, _, r2_pow = linfit(lx, ly)
    if abs(slope) < 0.1 or slope < 0:
        label = "flat" if abs(slope) < 0.1 else "falling"
    elif slope < 0.35:
        label = "logarithmic"
    elif slope < 0.8:
        # A logarithm grows ever slower on a log-log plot; a power does not.
        _, _, r2_log = linfit(lx, [y for _, y in pts])
        label = "logarithmic" if r2_log > r2_pow + 0.02 else "sub-linear"
    elif slope <= 1.2:
        label = "linear"
    else:
        label = "worse than linear"
    return label, slope


def growth_text(points, what):
    label, slope = growth(points)
    if slope is None:
        return f"{what}: {label}"
    return f"{what}: **{label}** (log-log slope {slope:.2f})"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def by(lines, curve):
    return [d for d in lines if d.get("curve") == curve]


def series(lines, broker, key, value):
    pts = sorted((key(d), value(d)) for d in lines if d.get("broker") == broker and "error" not in d)
    return [(x, y) for x, y in pts if y is not None]


class Plots:
    def __init__(self, directory):
        self.dir = directory
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            self.plt = plt
        except ImportError:
            self.plt = None
            print("(matplotlib missing: no plots)", file=sys.stderr)

    def figure(self, name, panels, title):
        """panels: [(ylabel, xlabel, [(label, [(x, y)], style)], logx, logy)]"""
        if self.plt is None:
            return None
        plt = self.plt
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
        for ax, (ylabel, xlabel, lines, logx, logy) in zip(axes[0], panels):
            for label, pts, style in lines:
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            if logx:
                ax.set_xscale("log")
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if any(pts for _, pts, _ in lines):
                ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = os.path.join(self.dir, f"scale-{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return f"scale-{name}.png"


STYLE = {"starling": "o-", "mosquitto": "s--", "rumqttd": "^:", "tcp": "k-."}


def image(name):
    return f"\n![{name}]({name})\n" if name else ""


def report_copy_payload(lines, plots):
    copy = {d["point"]: d.get("mb_per_s") for d in by(lines, "copy") if "error" not in d}
    pay = by(lines, "payload")
    if not pay and not copy:
        return ""
    out = ["### Payload size (p2p QoS 0, 10 pairs) against the loopback copy limit", ""]
    sizes = sorted({d["point"] for d in pay} | set(copy))
    brokers = [b for b in PEERS if any(d.get("broker") == b for d in pay)]
    rows = []
    for s in sizes:
        row = [size(s), fmt(copy.get(s))]
        for b in brokers:
            d = next((d for d in pay if d["point"] == s and d.get("broker") == b), None)
            if d is None:
                row.append("–")
            elif "error" in d:
                row.append("failed")
            else:
                mb = d.get("mb_per_s")
                share = f" ({100 * mb / copy[s]:.0f} %)" if copy.get(s) and mb else ""
                mark = "" if d.get("qualifies") else "*"
                row.append(f"{fmt(mb)}{share} / {fmt(d.get('rate_median_per_s'))}{mark}")
        rows.append(row)
    out.append(table(["payload", "copy limit MB/s"] + [f"{b} MB/s (of limit) / msg/s" for b in brokers], rows))
    out.append("")
    out.append("\\* not qualified (broker below 90 % CPU or generator above 90 %, or errors).")
    out.append("")
    for b in brokers:
        pts = series(pay, b, lambda d: d["point"], lambda d: (1 / d["rate_median_per_s"]) if d.get("rate_median_per_s") else None)
        big = [p for p in pts if p[0] >= 4096]
        out.append("- " + growth_text(pts, f"{b}, time per message against payload")
                   + "; " + growth_text(big, "from 4 KiB on"))
    panels = [
        ("MB/s", "payload (bytes)",
         [("copy limit", sorted(copy.items()), STYLE["tcp"])]
         + [(b, series(pay, b, lambda d: d["point"], lambda d: d.get("mb_per_s")), STYLE[b]) for b in brokers],
         True, True),
        ("messages/s", "payload (bytes)",
         [(b, series(pay, b, lambda d: d["point"], lambda d: d.get("rate_median_per_s")), STYLE[b]) for b in brokers],
         True, True),
    ]
    out.append(image(plots.figure("payload", panels, "Payload size: p2p QoS 0, 10 pairs")))
    return "\n".join(out)


def report_fanout(lines, plots):
    fan = by(lines, "fanout")
    if not fan:
        return ""
    out = ["### Fan-out (1 publisher, QoS 0, 64 B, N subscribers of one topic)", ""]
    brokers = [b for b in PEERS if any(d.get("broker") == b for d in fan)]
    rows = []
    for n in sorted({d["point"] for d in fan}):
        row = [human(n)]
        for b in brokers:
            d = next((d for d in fan if d["point"] == n and d.get("broker") == b), None)
            if d is None:
                row.append("–")
            elif "error" in d:
                row.append("failed")
            else:
                mark = "" if d.get("qualifies") else "*"
                row.append(f"{fmt(d.get('rate_median_per_s'))}{mark} / {fmt(d.get('msgs_per_broker_cpu_s'))} / "
                           f"{fmt(get(d, 'latency_us.p99'))} / {fmt(d.get('gen_cpu_util'), 2)}")
        rows.append(row)
    out.append(table(["subscribers"] + [f"{b}: deliveries/s / per CPU-s / p99 µs / gen CPU" for b in brokers], rows))
    out.append("")
    out.append("\\* not qualified: the broker below 90 % CPU (the generator, reading every delivery, "
               "is then the limit) or errors.")
    out.append("")
    for b in brokers:
        pts = series(fan, b, lambda d: d["point"],
                     lambda d: 1 / d["msgs_per_broker_cpu_s"] if d.get("msgs_per_broker_cpu_s") else None)
        out.append("- " + growth_text(pts, f"{b}, broker CPU per delivery against subscribers")
                   + "; " + growth_text([p for p in pts if p[0] >= 100], "from 100 on"))
    panels = [
        ("deliveries/s", "subscribers",
         [(b, series(fan, b, lambda d: d["point"], lambda d: d.get("rate_median_per_s")), STYLE[b]) for b in brokers],
         True, True),
        ("broker CPU µs per delivery", "subscribers",
         [(b, series(fan, b, lambda d: d["point"],
                     lambda d: 1e6 / d["msgs_per_broker_cpu_s"] if d.get("msgs_per_broker_cpu_s") else None),
           STYLE[b]) for b in brokers],
         True, True),
    ]
    out.append(image(plots.figure("fanout", panels, "Fan-out: 1 publisher to N subscribers, QoS 0")))
    return "\n".join(out)


def report_clients(lines, plots):
    cl = by(lines, "clients")
    limit = next(iter(by(lines, "clients-limit")), None)
    if not cl:
        return ""
    out = ["### Connected clients (half publishing one 64 B QoS 0 message a second, half subscribed)", ""]
    if limit:
        out.append(f"Largest point: {limit['max_clients']:,} clients, because of {limit['reason']}.")
        out.append("")
    brokers = [b for b in PEERS if any(d.get("broker") == b for d in cl)]
    rows = []
    for d in sorted(cl, key=lambda d: (d["point"], PEERS.index(d["broker"]) if d.get("broker") in PEERS else 9)):
        if "skipped" in d:
            rows.append([human(d["point"]), "–", d["skipped"]] + [""] * 8)
            continue
        if "error" in d or d.get("failed"):
            rows.append([human(d["point"]), d.get("broker"), "failed: " + str(d.get("error") or d.get("errors"))[:120]] + [""] * 8)
            continue
        rows.append([
            human(d["point"]), d["broker"], fmt(d.get("connect_rate_per_s")), fmt(d.get("rss_per_conn_bytes")),
            fmt(get(d, "slow.rate_per_s")), fmt(get(d, "slow.latency_us.p50")), fmt(get(d, "slow.latency_us.p99")),
            fmt(get(d, "slow.broker_us_per_msg"), 2),
            fmt(get(d, "fast.rate_median_per_s")) + ("" if get(d, "fast.qualifies") else "*"),
            fmt(get(d, "fast.latency_us.p99")), fmt(d.get("slow_delivery_ratio"), 4),
        ])
    out.append(table(["clients", "broker", "connect/s", "RSS B/conn", "slow msg/s", "slow p50 µs", "slow p99 µs",
                      "broker µs/slow msg", "10 fast pairs msg/s", "fast p99 µs", "slow delivered"], rows))
    out.append("")
    out.append("\\* the saturating stream did not qualify (broker below 90 % CPU, generator above 90 %, or errors).")
    out.append("")

    def ok(d):
        return "error" not in d and "skipped" not in d and not d.get("failed")

    good = [d for d in cl if ok(d)]
    for b in brokers:
        p99 = series(good, b, lambda d: d["point"], lambda d: get(d, "slow.latency_us.p99"))
        cost = series(good, b, lambda d: d["point"], lambda d: get(d, "slow.broker_us_per_msg"))
        fast = series(good, b, lambda d: d["point"],
                      lambda d: 1 / get(d, "fast.rate_median_per_s") if get(d, "fast.rate_median_per_s") else None)
        out.append("- " + b + ": " + "; ".join([
            growth_text(p99, "p99 of the slow stream against clients"),
            growth_text(cost, "broker CPU per slow message"),
            growth_text(fast, "time per message of the saturating stream"),
        ]))
    panels = [
        ("slow stream p99 latency (µs)", "connected clients",
         [(b, series(good, b, lambda d: d["point"], lambda d: get(d, "slow.latency_us.p99")), STYLE[b]) for b in brokers],
         True, True),
        ("saturating 10 pairs (msg/s)", "connected clients",
         [(b, series(good, b, lambda d: d["point"], lambda d: get(d, "fast.rate_median_per_s")), STYLE[b]) for b in brokers],
         True, False),
        ("broker CPU µs per slow message", "connected clients",
         [(b, series(good, b, lambda d: d["point"], lambda d: get(d, "slow.broker_us_per_msg")), STYLE[b]) for b in brokers],
         True, True),
    ]
    out.append(image(plots.figure("clients", panels, "Connected clients: half publish 1 msg/s, half subscribe")))
    return "\n".join(out)


def report_subs(lines, plots):
    su = [d for d in by(lines, "subs")]
    if not su:
        return ""
    out = ["### Subscriptions (8 subscriber connections, 20,000 msg/s QoS 0 to topics spread over all of them)", ""]
    rows = []
    for d in sorted(su, key=lambda d: (d.get("kind", ""), d["point"])):
        if "error" in d:
            rows.append([human(d["point"]), d.get("kind", "?"), "failed: " + d["error"][:120]] + [""] * 8)
            continue
        rows.append([
            human(d["point"]), d["kind"], fmt(d.get("setup_subs_per_s")), fmt(d.get("rss_per_sub_bytes")),
            fmt(get(d, "publish.rate_per_s")), fmt(get(d, "publish.broker_us_per_msg"), 2),
            fmt(get(d, "publish.latency_us.p50")), fmt(get(d, "publish.latency_us.p99")),
            fmt(get(d, "publish.delivery_ratio"), 4),
            fmt(get(d, "subscribe.rtt_us.p50")), fmt(get(d, "subscribe.rtt_us.p99")),
        ])
    out.append(table(["subscriptions", "filters", "set up subs/s", "RSS B/sub", "published msg/s", "broker µs/msg",
                      "p50 µs", "p99 µs", "delivered", "SUBSCRIBE p50 µs", "SUBSCRIBE p99 µs"], rows))
    out.append("")
    good = [d for d in su if "error" not in d]
    kinds = sorted({d["kind"] for d in good})
    for k in kinds:
        ds = [d for d in good if d["kind"] == k]
        pts = sorted((d["point"], get(d, "publish.broker_us_per_msg")) for d in ds)
        sub = sorted((d["point"], get(d, "subscribe.rtt_us.p50")) for d in ds)
        p99 = sorted((d["point"], get(d, "publish.latency_us.p99")) for d in ds)
        out.append(f"- {k}: " + "; ".join([
            growth_text(pts, "broker CPU per published message against subscriptions"),
            growth_text(p99, "p99"),
            growth_text(sub, "SUBSCRIBE round trip"),
        ]))
    style = {"exact": "o-", "wildcard": "s--"}
    panels = [
        ("broker CPU µs per published message", "subscriptions",
         [(k, sorted((d["point"], get(d, "publish.broker_us_per_msg")) for d in good if d["kind"] == k), style.get(k, "x-"))
          for k in kinds], True, False),
        ("latency µs (p50, p99)", "subscriptions",
         [(f"{k} {q}", sorted((d["point"], get(d, f"publish.latency_us.{q}")) for d in good if d["kind"] == k),
           style.get(k, "x-")) for k in kinds for q in ("p50", "p99")], True, True),
        ("SUBSCRIBE round trip µs (p50)", "subscriptions",
         [(k, sorted((d["point"], get(d, "subscribe.rtt_us.p50")) for d in good if d["kind"] == k), style.get(k, "x-"))
          for k in kinds], True, False),
    ]
    out.append(image(plots.figure("subs", panels, "Publish and SUBSCRIBE cost against subscriptions (Starling)")))
    return "\n".join(out)


def report_retained(lines, plots):
    re_ = by(lines, "retained")
    if not re_:
        return ""
    out = ["### Retained messages (64 B each; each filter on a fresh connection)", ""]
    among = {d["point"]: d for d in by(lines, "retained-among") if "error" not in d}
    rows = []
    for d in sorted(re_, key=lambda d: d["point"]):
        if "error" in d:
            rows.append([human(d["point"]), "failed: " + d["error"][:120]] + [""] * 7)
            continue
        rows.append([
            human(d["point"]), fmt(d.get("store_per_s")), fmt(d.get("rss_per_retained_bytes")),
            fmt(among.get(d["point"], {}).get("rss_per_retained_bytes")), fmt(get(d, "one.all_received_ms"), 3), fmt(get(d, "narrow.all_received_ms"), 3),
            fmt(get(d, "all.suback_ms"), 3), fmt(get(d, "all.all_received_ms"), 1), fmt(get(d, "all.per_message_us"), 3),
        ])
    out.append(table(["retained", "stored/s", "RSS B/retained", "RSS B/retained among a stream", "one topic ms", "`scale/r/5/+` (100) ms",
                      "`#` SUBACK ms", "`#` all ms", "`#` µs/message"], rows))
    out.append("")
    good = [d for d in re_ if "error" not in d]
    pick = lambda path: sorted((d["point"], get(d, path)) for d in good)
    out.append("- " + "; ".join([
        growth_text(pick("one.all_received_ms"), "one topic against retained count"),
        growth_text(pick("narrow.all_received_ms"), "narrow filter (100 messages)"),
        growth_text(pick("all.all_received_ms"), "`#` (all of them: linear is the floor)"),
        growth_text(pick("rss_per_retained_bytes"), "RSS per retained message"),
    ]))
    panels = [
        ("time to receive (ms)", "retained messages",
         [("one topic", pick("one.all_received_ms"), "o-"), ("scale/r/5/+ (100)", pick("narrow.all_received_ms"), "s--"),
          ("# (all)", pick("all.all_received_ms"), "^:")], True, True),
        ("broker RSS per retained message (bytes)", "retained messages",
         [("published together", pick("rss_per_retained_bytes"), "o-"),
          ("among a stream (49 others each)",
           [(p, d["rss_per_retained_bytes"]) for p, d in sorted(among.items())
            if d.get("rss_per_retained_bytes") is not None], "s--")], True, False),
    ]
    out.append(image(plots.figure("retained", panels, "Retained messages (Starling)")))
    return "\n".join(out)


def report_startup(lines, plots):
    fill = by(lines, "fill")
    st = [d for d in by(lines, "startup") if "error" not in d]
    bad = [d for d in by(lines, "startup") if "error" in d]
    if not fill and not st and not bad:
        return ""
    out = ["### Start-up with a full store (durability sync)", ""]
    for f in fill:
        if "error" in f:
            out.append(f"Filling failed: {f['error'][:200]}")
            continue
        out.append(f"Filled through the broker (durability periodic): {f.get('sessions', 0):,} persistent sessions "
                   f"in {fmt(f.get('sessions_s'))} s ({fmt(f.get('sessions_per_s'))}/s), "
                   f"{f.get('messages', 0):,} QoS 1 messages queued for them in {fmt(f.get('messages_s'))} s "
                   f"({fmt(f.get('messages_per_s'))}/s).")
        out.append("")
    rows = []
    for d in st:
        r = d.get("restored", {})
        rows.append([d.get("start"), fmt(d.get("port_s"), 3), fmt(d.get("ready_s"), 3),
                     fmt(d.get("broker_rss_kb", 0) / 1024), fmt((d.get("broker_peak_rss_kb") or 0) / 1024),
                     fmt(sum(v for k, v in r.items() if k.startswith("sessions")) if r else None),
                     fmt(r.get("messages_queued")), fmt(d.get("store_bytes", 0) / 1e6)])
    for d in bad:
        rows.append([d.get("start"), "failed: " + d["error"][:100]] + [""] * 6)
    out.append(table(["start", "port accepts (s)", "/readyz 200 (s)", "RSS after (MiB)", "peak RSS (MiB)",
                      "sessions restored", "messages queued", "store MB"], rows))
    out.append("")
    if st:
        ready = sorted(d.get("ready_s") or d.get("port_s") for d in st)
        med = ready[len(ready) // 2]
        n = st[0].get("point")
        q = st[0].get("queued")
        out.append(f"- Median start-up: {med:.2f} s for {n:,} sessions and {q:,} queued messages "
                   f"({med * 1e6 / (q or 1):.2f} µs per queued message); one size only, so no growth is computed.")
        panels = [
            ("seconds", "start",
             [("port accepts", [(d["start"], d.get("port_s")) for d in st], "o-"),
              ("/readyz 200", [(d["start"], d.get("ready_s")) for d in st], "s--")], False, False),
            ("MiB", "start",
             [("RSS after start", [(d["start"], d.get("broker_rss_kb", 0) / 1024) for d in st], "o-"),
              ("peak RSS", [(d["start"], (d.get("broker_peak_rss_kb") or 0) / 1024) for d in st], "s--")], False, False),
        ]
        out.append(image(plots.figure("startup", panels,
                                      f"Start-up with {n:,} sessions and {q:,} queued messages (Starling)")))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", nargs="?", default=os.path.join(os.path.dirname(__file__), "scale.jsonl"))
    ap.add_argument("--plots", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    lines = []
    with open(a.jsonl) as f:
        for raw in f:
            raw = raw.strip()
            if raw:
                lines.append(json.loads(raw))
    plots = Plots(a.plots)
    run = next(iter(by(lines, "run")), {})
    end = next(iter(by(lines, "end")), {})
    print(f"Command: `{run.get('command', '?')}`, {run.get('date', '?')}, commit {run.get('commit', '?')}, "
          f"{run.get('cpus', '?')} cores, open-file limit {run.get('nofile', '?')}, priority {run.get('priority', '?')}, "
          f"{run.get('mosquitto', 'mosquitto')}, rumqttd {run.get('rumqttd', '?')}, kernel {run.get('kernel', '?')}; "
          f"{end.get('elapsed_s', '?')} s in all.")
    print()
    for part in (report_copy_payload, report_fanout, report_clients, report_subs, report_retained, report_startup):
        text = part(lines, plots)
        if text:
            print(text)
            print()


if __name__ == "__main__":
    main()
