#!/usr/bin/env python3
"""Issue 12's figures from issue12.sh's JSON: per server and scenario, each round's rate, p50 and
p99, its share of the echo server's rate in the same run, the machine's CPU per call, and the
medians: python3 summarize_issue12.py [folder]"""
import json, pathlib, re, statistics, sys
from collections import defaultdict

folder = pathlib.Path(__file__).parent / (sys.argv[1] if len(sys.argv) > 1 else "issue12")
rows = defaultdict(list)
for f in sorted(folder.glob("*.json")):
    who, scenario, rnd = re.fullmatch(r"(\w+)-(\w+)-(\d+)", f.stem).groups()
    r = json.loads(f.read_text())
    run, echo = r["runs"][0], r.get("echo")
    rows[(scenario, who)].append((
        run["events_per_sec"], run["latency_us"]["p50"] / 1000, run["latency_us"]["p99"] / 1000,
        100 * run["events_per_sec"] / echo["events_per_sec"] if echo else None,
        run.get("machine_cpu_us_per_event"), run.get("storage_bytes_per_usage_row")))
for (scenario, who), runs in sorted(rows.items()):
    med = lambda i: statistics.median(x[i] for x in runs if x[i] is not None) if any(x[i] is not None for x in runs) else float("nan")
    each = "; ".join(f"{x[0]:.0f}/s p50 {x[1]:.2f} p99 {x[2]:.1f}" + (f" {x[3]:.1f}% of echo" if x[3] else "") for x in runs)
    print(f"{scenario:9} {who:5} median {med(0):7.0f}/s p50 {med(1):5.2f} ms p99 {med(2):5.1f} ms"
          f" echo-share {med(3):5.1f}% cpu {med(4):6.1f} µs bytes {med(5):4.0f} | {each}")
