"""Draws benches/requests_per_second.png from the CSV the load driver writes.

Usage: python benches/plot.py target/load.csv benches/requests_per_second.png
"""
import collections
import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

runs = collections.defaultdict(list)
with open(sys.argv[1]) as f:
    for row in csv.DictReader(f):
        runs[row["config"]].append(float(row["rps"]))
labels = list(runs)
medians = [statistics.median(runs[k]) for k in labels]
lows = [m - min(runs[k]) for k, m in zip(labels, medians)]
highs = [max(runs[k]) - m for k, m in zip(labels, medians)]
fig, ax = plt.subplots(figsize=(9, 4.5))
bars = ax.barh(labels, medians, xerr=[lows, highs], color="#4c72b0", capsize=4)
for bar, m, k in zip(bars, medians, labels):
    ax.text(max(runs[k]), bar.get_y() + bar.get_height() / 2, f"  {m:,.0f}", va="center")
ax.invert_yaxis()
ax.set_xlabel("requests/s: median of runs, whiskers min..max\n(server pinned to one core, 32 keep-alive connections, ~1 KiB signed bodies)")
ax.set_title("klikit-webhook load benchmark (benches/load.sh)")
ax.set_xlim(0, max(max(v) for v in runs.values()) * 1.2)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
print(f"wrote {sys.argv[2]}")
