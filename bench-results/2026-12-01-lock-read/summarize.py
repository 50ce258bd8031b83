#!/usr/bin/env python3
"""Medians per server of one or more sittings' JSON reports, and each round's figure as a share
of the same round's `before`: python3 summarize.py sitting4 sitting5"""
import json, pathlib, re, statistics, sys
from collections import defaultdict

here = pathlib.Path(__file__).parent
rate, cpu, ratio = defaultdict(list), defaultdict(list), defaultdict(list)
for sitting in sys.argv[1:]:
    rounds = defaultdict(dict)
    for f in sorted((here / sitting).glob("*.json")):
        m = re.fullmatch(r"(.+)-(\d+)", f.stem)
        r = json.loads(f.read_text())
        r = r["runs"][0]
        rounds[m.group(2)][m.group(1)] = r
    for n, servers in sorted(rounds.items()):
        for name, r in servers.items():
            rate[name].append(r["events_per_sec"])
            if r.get("machine_cpu_us_per_event"):
                cpu[name].append(r["machine_cpu_us_per_event"])
            if "before" in servers:
                ratio[name].append(100 * r["events_per_sec"] / servers["before"]["events_per_sec"])
for name in sorted(rate):
    print(f"{name:12} runs {len(rate[name]):2}  events/s median {statistics.median(rate[name]):7.0f}"
          f"  CPU µs/event median {statistics.median(cpu[name]) if cpu[name] else float('nan'):6.1f}"
          f"  share of the round's before: median {statistics.median(ratio[name]):5.1f}%"
          f"  ({', '.join(f'{x:.0f}' for x in ratio[name])})")
