"""Writes summary.md and the charts of a results folder from its raw files.

Usage: python benches/report.py <results folder> [--baseline <earlier results folder>]

`bash benches/run.sh` calls it at the end of a run; it can be rerun on any
results folder. It reads only files of that folder (and of the baseline):
load/round-*.csv (examples/load.rs), criterion/round-*/**/new/estimates.json
(criterion), pairs/pair-*.csv (the paired runs of twin and memory), soak.csv,
run.txt, machine.txt and loadavg.txt. Every figure is
given as the median over all rounds with the minimum and maximum; no round is
left out. Ratios are given as the ratio of the medians, with the minimum and
maximum of the per-round ratios (the two configurations of a ratio ran in the
same round). Needs matplotlib for the charts.
"""

import argparse
import collections
import csv
import json
import math
import pathlib
import re
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The load figures of a round, by CSV column.
MEASURES = {
    "rps": "requests/s",
    "p50_us": "p50 latency µs",
    "p99_us": "p99 latency µs",
    "server_cpu_us_per_req": "server CPU µs/delivery",
    "client_cpu_share": "driver CPU share",
}
ORDER = ["twin", "memory", "sqlite", "redis", "postgres", "memory-before", "sqlite-before", "redis-before",
         "postgres-before", "twin-ok", "memory-dup20", "twin-dup20", "flask"]


def med(values):
    return statistics.median(values) if values else math.nan


def spread(values):
    """median, min, max"""
    return (med(values), min(values), max(values)) if values else (math.nan,) * 3


def fmt(value, digits=0):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def cell(values, digits=0):
    m, lo, hi = spread(values)
    return f"{fmt(m, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


SIZES = {"64B": 64, "1KiB": 1 << 10, "16KiB": 16 << 10, "1MiB": 1 << 20}


def bench_order(bench_id):
    """Criterion ids grouped by benchmark, sizes in increasing order."""
    parts = bench_id.split("/")
    return (parts[0], SIZES.get(parts[-1], 0), parts[1:])


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.3f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3f} µs"
    return f"{ns:.1f} ns"


def read_load(folder, sub="load", pattern="round-*.csv"):
    """{config: {round: row}}, {config: label}, from the driver's CSV files
    (the rounds' load/round-<n>.csv, or with "pairs", "pair-*.csv" the
    paired runs, whose `round` is the pair)"""
    runs, labels = collections.defaultdict(dict), {}
    for path in sorted((folder / sub).glob(pattern), key=lambda p: int(p.stem.split("-")[1])):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                key = row["config"]
                labels[key] = row["label"]
                runs[key][int(row["round"])] = row
    return runs, labels


def values(runs, config, column):
    return [float(row[column]) for _, row in sorted(runs.get(config, {}).items())]


def per_round(runs, config, column):
    return {r: float(row[column]) for r, row in runs.get(config, {}).items()}


def read_criterion(folder):
    """{benchmark id: {round: median ns}}"""
    out = collections.defaultdict(dict)
    for round_dir in sorted((folder / "criterion").glob("round-*")):
        r = int(round_dir.name.split("-")[1])
        for est in round_dir.glob("**/new/estimates.json"):
            bench = est.parent.parent
            full_id = "/".join(bench.relative_to(round_dir).parts)
            meta = bench / "new" / "benchmark.json"
            if meta.exists():
                full_id = json.loads(meta.read_text()).get("full_id", full_id)
            out[full_id][r] = json.loads(est.read_text())["median"]["point_estimate"]
    return out


def read_soak(folder):
    """{config: [(deliveries, rss KiB)]}, {config: label}"""
    path = folder / "soak.csv"
    samples, labels = collections.defaultdict(list), {}
    if path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                samples[row["config"]].append((int(row["deliveries"]), int(row["rss_kib"])))
                labels[row["config"]] = row["label"]
    return samples, labels


def binomial_tail(n, k):
    """P(X >= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n


def median_ci(sorted_values, confidence=0.95):
    """A distribution-free confidence interval for the median: the order
    statistics x(l) and x(n+1-l), with l the largest rank such that
    P(Binomial(n, 1/2) < l) <= (1 - confidence) / 2. Its coverage is at
    least `confidence`; None when n is too small for any such l (n < 6 at 95 %)."""
    n = len(sorted_values)
    alpha = (1 - confidence) / 2
    lower = 0
    for rank in range(1, n + 1):
        if 1 - binomial_tail(n, rank) <= alpha:
            lower = rank
        else:
            break
    if lower == 0:
        return None
    return sorted_values[lower - 1], sorted_values[n - lower]


def interval_text(ci):
    return "n/a" if ci is None else f"{fmt(ci[0], 3)}–{fmt(ci[1], 3)}"


def machine_facts(folder):
    text = (folder / "machine.txt").read_text() if (folder / "machine.txt").exists() else ""

    def field(name):
        m = re.search(rf"^{re.escape(name)}:\s*(.+)$", text, re.M)
        return m.group(1).strip() if m else "?"

    def section(title):
        m = re.search(rf"^## {re.escape(title)}[^\n]*\n(.+?)$", text, re.M)
        return m.group(1).strip() if m else "?"

    flags = field("Flags").split()
    return {
        "cpu": f"{field('Model name')}, {field('CPU(s)')} CPUs ({field('Thread(s) per core')} thread per core), "
        f"family {field('CPU family')} model {field('Model')}, hypervisor {field('Hypervisor vendor')}, "
        f"L2 {field('L2 cache')}, L3 {field('L3 cache')}, SHA-NI {'yes' if 'sha_ni' in flags else 'no'}",
        "kernel": section("uname -a"),
        "rustc": section("rustc -Vv"),
        "load_before": section("load average before"),
        "load_after": section("load average after"),
    }


def round_ratios(runs, a, b, column):
    """{round: a's figure ÷ b's} for the rounds that ran both, b's figure not 0."""
    ra, rb = per_round(runs, a, column), per_round(runs, b, column)
    return {r: ra[r] / rb[r] for r in sorted(set(ra) & set(rb)) if rb[r]}


def ratio_stats(runs, a, b, column):
    """Ratio of the medians, and min/max of the per-round ratios."""
    ra, rb = per_round(runs, a, column), per_round(runs, b, column)
    if not ra or not rb:
        return None
    per = list(round_ratios(runs, a, b, column).values())
    return med(list(ra.values())) / med(list(rb.values())), min(per), max(per), per


def cross_stats(runs, base_runs, config, column):
    """This run against a baseline run: ratio of the medians; the worst and
    best pairing of a round of each."""
    now, before = values(runs, config, column), values(base_runs, config, column)
    if not now or not before:
        return None
    pairs = [n / b for n in now for b in before if b]
    return med(now) / med(before), min(pairs), max(pairs), pairs


# "Redis stays where it is or better": at least this share of its requests/s
# before, and at most the inverse in CPU per delivery. A margin for
# round-to-round noise, fixed before the first run with BEFORE.
REDIS_KEEP = 0.95


def check(value, op, target):
    return value >= target if op == ">=" else value <= target if op == "<=" else value > target


def bar_chart(path, title, xlabel, keys, labels, data, digits=0, log=False):
    """Horizontal bars at the median, whiskers from min to max, a dot per round."""
    keys = [k for k in keys if data.get(k)]
    if not keys:
        return False
    medians = [med(data[k]) for k in keys]
    lows = [m - min(data[k]) for k, m in zip(keys, medians)]
    highs = [max(data[k]) - m for k, m in zip(keys, medians)]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(keys) + 1.8))
    y = list(range(len(keys)))
    ax.barh(y, medians, xerr=[lows, highs], color="#4c72b0", alpha=0.85, capsize=5, error_kw={"elinewidth": 1.5})
    for i, k in enumerate(keys):
        ax.scatter(data[k], [i] * len(data[k]), color="black", s=12, zorder=3)
        ax.text(max(data[k]), i, f"  {fmt(medians[i], digits)}", va="center", fontsize=9)
    ax.set_yticks(y, [labels.get(k, k) for k in keys])
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(min(v) for v in data.values() if v) / 2, max(max(v) for v in data.values() if v) * 8)
    else:
        ax.set_xlim(0, max(max(data[k]) for k in keys) * 1.22)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=pathlib.Path)
    parser.add_argument("--baseline", type=pathlib.Path)
    args = parser.parse_args()
    folder = args.folder.resolve()
    runs, labels = read_load(folder)
    configs = [k for k in ORDER if k in runs] + sorted(k for k in runs if k not in ORDER)
    rounds = sorted({r for rs in runs.values() for r in rs})
    micro = read_criterion(folder)
    soak, soak_labels = read_soak(folder)
    base_runs = read_load(args.baseline.resolve())[0] if args.baseline else {}
    facts = machine_facts(folder)
    run_txt = (folder / "run.txt").read_text() if (folder / "run.txt").exists() else ""
    header = next(iter(sorted((folder / "load").glob("round-*.txt"))), None)
    settings = header.read_text().splitlines()[0] if header else ""

    out = []
    w = out.append
    w(f"# Benchmark results: {folder.name}\n")
    w(
        "Generated by `benches/report.py` from the raw files of this folder, which `bash benches/run.sh` wrote. "
        f"Every figure is the **median of all {plural(len(rounds), 'round')} (minimum–maximum)**; no round is left out. "
        "A ratio is the ratio of the two medians, with the minimum–maximum of the per-round ratios "
        "(both configurations of a ratio ran in the same round).\n"
    )
    w("## Run and machine\n")
    w(f"- CPU: {facts['cpu']}")
    w(f"- kernel: `{facts['kernel']}`; `{facts['rustc']}`")
    w(f"- load average (1, 5, 15 min) before: {facts['load_before']}; after: {facts['load_after']}; "
      "at the start of each round: [loadavg.txt](loadavg.txt); at the start of each run: the `loadavg_1m` "
      "column of the CSV files")
    w(f"- driver: `{settings}`")
    w("- raw files: [run.txt](run.txt) (below), [machine.txt](machine.txt) (lscpu, uname, rustc, the store "
      "servers' versions and settings), [build.log](build.log), [python-packages.txt](python-packages.txt)\n")
    w("```")
    w(run_txt.rstrip())
    w("```\n")

    # ---- goals
    goals = []

    def goal(name, stats, op, target, note=""):
        goals.append((name, stats, op, target, note))

    if "sqlite" in runs and "memory" in runs:
        goal("SQLite (default store) requests/s ÷ memory requests/s", ratio_stats(runs, "sqlite", "memory", "rps"),
             ">=", 0.5)
        goal("SQLite p99 ÷ memory p99", ratio_stats(runs, "sqlite", "memory", "p99_us"), "<=", 2.0)
    if "postgres" in runs:
        v = values(runs, "postgres", "server_cpu_us_per_req")
        goal("Postgres: receiver CPU µs per delivery (Postgres' own CPU not counted)",
             (med(v), min(v), max(v), v), "<=", 50.0)
    # "Today's" store: the receiver built from the BEFORE commit, in the same
    # rounds (configurations `<store>-before`); else an earlier run (--baseline).
    for key, name in (("postgres", "Postgres"), ("redis", "Redis"), ("sqlite", "SQLite")):
        before = f"{key}-before"
        rps_target, cpu_target = {"postgres": (2.0, None), "redis": (REDIS_KEEP, 1 / REDIS_KEEP)}.get(
            key, (None, None))
        if key in runs and before in runs:
            goal(f"{name} requests/s ÷ {name} requests/s at BEFORE (same rounds)",
                 ratio_stats(runs, key, before, "rps"), ">=" if rps_target else None, rps_target)
            goal(f"{name} CPU µs/delivery ÷ {name} CPU µs/delivery at BEFORE (same rounds)",
                 ratio_stats(runs, key, before, "server_cpu_us_per_req"), "<=" if cpu_target else None, cpu_target)
        elif key in runs and base_runs and rps_target:
            goal(f"{name} requests/s ÷ baseline {name} requests/s", cross_stats(runs, base_runs, key, "rps"),
                 ">=", rps_target, "baseline")
            if cpu_target:
                goal(f"{name} CPU µs/delivery ÷ baseline {name} CPU µs/delivery",
                     cross_stats(runs, base_runs, key, "server_cpu_us_per_req"), "<=", cpu_target, "baseline")
    if "memory" in runs and "twin" in runs:
        goal("memory requests/s ÷ twin requests/s", ratio_stats(runs, "memory", "twin", "rps"), ">", 1.0)
        goal("memory CPU µs/delivery ÷ twin CPU µs/delivery",
             ratio_stats(runs, "memory", "twin", "server_cpu_us_per_req"), None, None)
    # The paired runs (pairs/pair-<n>.csv): per pair, memory ÷ twin.
    pair_runs = read_load(folder, "pairs", "pair-*.csv")[0]
    pair_numbers = sorted({n for rs in pair_runs.values() for n in rs})
    rps_by_pair = round_ratios(pair_runs, "memory", "twin", "rps")
    cpu_by_pair = round_ratios(pair_runs, "memory", "twin", "server_cpu_us_per_req")
    ratios, cpu = list(rps_by_pair.values()), list(cpu_by_pair.values())
    ci = median_ci(sorted(ratios))
    ahead = sum(r > 1 for r in ratios)
    w("## The goals of issue 13\n")
    w("| figure | median | min–max | target | met by the median | met in every round |")
    w("|---|---|---|---|---|---|")
    for name, stats, op, target, note in goals:
        if stats is None:
            w(f"| {name} | not run | | | | |")
            continue
        m, lo, hi, per = stats
        digits = 1 if "CPU µs per delivery" in name else 3
        if op is None:
            w(f"| {name} | {fmt(m, digits)} | {fmt(lo, digits)}–{fmt(hi, digits)} | (reported) | | |")
            continue
        every = all(check(p, op, target) for p in per)
        every_text = ("yes" if every else "no") + (" (every pairing with a baseline round)" if note else "")
        w(f"| {name} | {fmt(m, digits)} | {fmt(lo, digits)}–{fmt(hi, digits)} | {op} {target:g} | "
          f"{'yes' if check(m, op, target) else '**no**'} | {every_text} |")
    if ratios:
        p_value = binomial_tail(len(ratios), ahead)
        verdict = ("too few pairs for a 95 % interval" if ci is None
                   else "**ahead**: the interval is above 1" if ci[0] > 1
                   else "**behind**: the interval is below 1" if ci[1] < 1
                   else "**level**: the interval holds 1")
        w(f"| memory requests/s ÷ twin requests/s, {plural(len(ratios), 'paired run')} (median of the per-pair ratios; "
          f"95 % interval of that median {interval_text(ci)}) | {fmt(med(ratios), 3)} | {fmt(min(ratios), 3)}–{fmt(max(ratios), 3)} | "
          f"> 1, interval above 1 | {verdict} | ahead in {ahead} of {len(ratios)} pairs |")
        w(f"\nPaired runs (below): the one-sided sign test of \"memory ahead of the twin\" gives p = {p_value:.3g} "
          f"({ahead} of {len(ratios)} pairs ahead; p is the chance of at least that many if the two were level). "
          "The interval is distribution-free (order statistics of the per-pair ratios); it is the figure the goal "
          "\"ahead of the twin\" is judged on, since a few rounds cannot tell a lead of a few percent from noise.")
    if any(k.endswith("-before") for k in runs):
        w(f"\n`BEFORE`: the configurations `<store>-before` ran the reference receiver built from the commit "
          "`run.txt` names, in the same rounds as the others, so their ratios pair configurations of one round. "
          f"Redis' target is {REDIS_KEEP:g}× (\"stays where it is\"): its code did not change, and 5 % is a margin "
          "for round-to-round noise fixed before the first such run; compare each configuration's own min–max below.")
    elif not base_runs:
        w("\nNo `BEFORE` and no `BASELINE` were given: the comparisons of Postgres and Redis with today's stores "
          "are left out.")
    if base_runs:
        w(f"\nBaseline: `{args.baseline}` (its `load/round-*.csv`). A ratio to the baseline is the ratio of the two "
          "medians; its min–max pairs every round of this run with every round of the baseline. Two runs at "
          "different times see different background load: compare their `loadavg_1m` columns.")
    w("")

    # ---- load
    w("## Load\n")
    w("Each configuration ran once per round, in an order rotated by one each round "
      "([`examples/load.rs`](../../../examples/load.rs) describes a run). "
      "Server CPU is the server's own utime+stime over the measured window divided by the deliveries; "
      "Redis' and Postgres' CPU is not in it. Driver CPU share is the part of its core the driver used: "
      "well below 1 means the driver was not the bottleneck.\n")
    w("| configuration | rounds | requests/s | p50 µs | p99 µs | server CPU µs/delivery | driver CPU share "
      "| answers (all rounds) | store records after each run |")
    w("|---|---|---|---|---|---|---|---|---|")
    problems = []
    for k in configs:
        rows = [row for _, row in sorted(runs[k].items())]
        ok = sum(int(row["status_200"]) for row in rows)
        other = " ".join(row["status_other"] for row in rows if row["status_other"])
        dup = sum(int(row["duplicates"]) for row in rows)
        answers = f"200×{ok:,}" + (f", other: {other}" if other else "") + (f", duplicate-ignored {dup:,}" if dup else "")
        if other:
            problems.append(f"{labels[k]}: answers other than 200: {other}")
        if not k.endswith("dup20") and dup:
            problems.append(f"{labels[k]}: {dup} duplicate-ignored answers with unique ids")
        records = ", ".join(f"{int(row['store_records']):,}" for row in rows if row["store_records"]) or "–"
        w(f"| {labels[k]} | {len(rows)} | {cell(values(runs, k, 'rps'))} | {cell(values(runs, k, 'p50_us'))} | "
          f"{cell(values(runs, k, 'p99_us'))} | {cell(values(runs, k, 'server_cpu_us_per_req'), 1)} | "
          f"{cell(values(runs, k, 'client_cpu_share'), 2)} | {answers} | {records} |")
    missing = [(k, r) for k in configs for r in rounds if r not in runs[k]]
    for k, r in missing:
        problems.append(f"{labels[k]}: no result in round {r}")
    w("")
    if problems:
        w("**Check these before quoting the figures:**\n")
        for p in problems:
            w(f"- {p}")
        w("")
    charts = [
        ("requests_per_second.png", "rps", "requests/s", 0),
        ("cpu_us_per_delivery.png", "server_cpu_us_per_req", "server CPU µs per delivery (lower is better)", 1),
        ("p99_latency_us.png", "p99_us", "p99 latency µs (lower is better)", 0),
    ]
    for name, column, xlabel, digits in charts:
        data = {k: values(runs, k, column) for k in configs}
        title = (f"{xlabel.split(' (')[0]} by configuration: median of {plural(len(rounds), 'round')}, "
                 f"whiskers min–max, dots = rounds\n{folder.name}")
        if bar_chart(folder / name, title, xlabel, configs, labels, data, digits):
            w(f"![{xlabel}]({name})\n")
    w("Raw files: " + ", ".join(
        f"[round {r}](load/round-{r}.csv) ([text](load/round-{r}.txt))" for r in rounds)
      + "; the servers' logs in [load/logs/](load/logs/).\n")

    # ---- paired runs
    if pair_numbers:
        w("## Paired runs: the memory store against the twin\n")
        w("After the rounds, `benches/run.sh` ran the twin and the receiver with the memory store one right after "
          "the other, each on a fresh server, alternating which of the two went first (`PAIRS`, `PAIR_DURATION`). "
          "A pair's ratio compares two runs seconds apart, so drifting background load cancels out better than "
          "across a whole round.\n")
        pair_problems = []
        w("| pair | first | twin requests/s | memory requests/s | ratio | twin CPU µs | memory CPU µs | CPU ratio |")
        w("|---|---|---|---|---|---|---|---|")
        for n in pair_numbers:
            if n not in rps_by_pair:
                pair_problems.append(f"pair {n}: a configuration is missing, or the twin answered nothing")
                continue
            t, mem = pair_runs["twin"][n], pair_runs["memory"][n]
            first = "twin" if int(t["position"]) < int(mem["position"]) else "memory"
            w(f"| {n} | {first} | {fmt(float(t['rps']))} | {fmt(float(mem['rps']))} | "
              f"{fmt(rps_by_pair[n], 3)} | {fmt(float(t['server_cpu_us_per_req']), 1)} | "
              f"{fmt(float(mem['server_cpu_us_per_req']), 1)} | {fmt(cpu_by_pair.get(n), 3)} |")
            for row in (t, mem):
                if row["status_other"]:
                    pair_problems.append(f"pair {n}, {row['label']}: answers other than 200: {row['status_other']}")
        if ratios and cpu:
            w(f"\n- requests/s, memory ÷ twin: median {fmt(med(ratios), 3)} (min–max {fmt(min(ratios), 3)}–"
              f"{fmt(max(ratios), 3)}; 95 % interval of the median {interval_text(ci)}); ahead in {ahead} of "
              f"{len(ratios)} pairs, sign test p = {p_value:.3g}")
            w(f"- server CPU µs per delivery, memory ÷ twin: median {fmt(med(cpu), 3)} (min–max {fmt(min(cpu), 3)}–"
              f"{fmt(max(cpu), 3)}; 95 % interval of the median {interval_text(median_ci(sorted(cpu)))}); lower in "
              f"{sum(c < 1 for c in cpu)} of {len(cpu)} pairs\n")
            fig, ax = plt.subplots(figsize=(10, 3.8))
            xs = list(rps_by_pair)
            ax.axhline(1.0, color="black", linewidth=1)
            if ci is not None:
                ax.axhspan(ci[0], ci[1], color="#4c72b0", alpha=0.2, label="95 % interval of the median")
            ax.axhline(med(ratios), color="#4c72b0", linewidth=1.5, label=f"median {fmt(med(ratios), 3)}")
            ax.scatter(xs, ratios, color="black", s=16, zorder=3, label="one pair")
            ax.set_xlabel("pair")
            ax.set_ylabel("memory ÷ twin requests/s")
            ax.set_title(f"Receiver with the memory store ÷ hand-written twin, requests/s, "
                         f"{plural(len(ratios), 'paired run')}\n{folder.name}", fontsize=11)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
            fig.tight_layout()
            fig.savefig(folder / "pairs_memory_vs_twin.png", dpi=110)
            plt.close(fig)
            w("![memory ÷ twin requests/s per pair](pairs_memory_vs_twin.png)\n")
        w("Raw files: " + ", ".join(f"[pair {n}](pairs/pair-{n}.csv)" for n in pair_numbers)
          + "; the driver's output in [pairs/pairs.txt](pairs/pairs.txt), the servers' logs in "
          "[pairs/logs/](pairs/logs/).\n")
        if pair_problems:
            w("**Check these before quoting the figures:**\n")
            for p in pair_problems:
                w(f"- {p}")
            w("")

    # ---- micro
    if micro:
        mrounds = sorted({r for v in micro.values() for r in v})
        w("## Micro benchmarks (criterion)\n")
        w(f"Each round ran `benches/verify.rs`, `layer.rs` and `store.rs` once (`verify` and `layer` pinned to the "
          f"server's CPU, `store` unpinned: it also runs one thread per CPU). A figure is criterion's median "
          f"time per iteration in each round; the table gives the median of {plural(len(mrounds), 'round')} "
          "(minimum–maximum).\n")
        w("| benchmark | rounds | time per iteration |")
        w("|---|---|---|")
        for bench in sorted(micro, key=bench_order):
            v = [micro[bench][r] for r in sorted(micro[bench])]
            m, lo, hi = spread(v)
            w(f"| `{bench}` | {len(v)} | {fmt_ns(m)} ({fmt_ns(lo)}–{fmt_ns(hi)}) |")
        w("")

        def micro_ratio(a, b):
            if a not in micro or b not in micro:
                return None
            rs = sorted(set(micro[a]) & set(micro[b]))
            per = [micro[a][r] / micro[b][r] for r in rs]
            return med(list(micro[a].values())) / med(list(micro[b].values())), min(per), max(per)

        def ratio_line(label, a, b, digits=3):
            """A line "label = median ratio (min–max per round)", if both benches ran."""
            rt = micro_ratio(a, b)
            if rt:
                lines.append(f"- {label} = {rt[0]:.{digits}f} ({rt[1]:.{digits}f}–{rt[2]:.{digits}f} per round)")

        lines = []
        for size in ["64B", "1KiB", "16KiB", "1MiB"]:
            ratio_line(f"verify {size}: `Verifier` time ÷ pre-keyed HMAC time",
                       f"verify/verifier/{size}", f"verify/hmac_prekeyed/{size}")
        ratio_line("body digest, 1 KiB: SHA-256 time ÷ `BodyDigest::of` (XXH3-128) time",
                   "body_digest_1KiB/sha256", "body_digest_1KiB/xxh3_128", 2)
        ratio_line("typed payload, 1 KiB: `serde_json::from_slice` time ÷ `KlikitEvent::payload` time",
                   "event_payload_1KiB/serde_json_from_slice", "event_payload_1KiB/klikit_event_payload")
        v = micro.get("verify/verifier/1MiB")
        if v:
            mbps = [(1 << 20) / ns * 1e3 for ns in v.values()]
            lines.append(f"- verify 1 MiB: `Verifier` throughput {cell(mbps)} MB/s")
        g = "router_oneshot_1KiB"
        ratio_line("router, 1 KiB: layer + MemoryStore time ÷ by-hand time", f"{g}/layer_memory_store", f"{g}/by_hand")
        a, b = micro.get(f"{g}/layer_memory_store"), micro.get(f"{g}/bare")
        if a and b:
            added = [a[r] - b[r] for r in sorted(set(a) & set(b))]
            lines.append(f"- router, 1 KiB: the layer adds {fmt_ns(med(added))} per request over the bare router "
                         f"({fmt_ns(min(added))}–{fmt_ns(max(added))} per round)")
        for bench in sorted(micro):
            if bench.startswith("memory_store_claim_complete/"):
                ops = [1e3 / ns for ns in micro[bench].values()]
                what = "inserts" if bench.endswith("/bounded_set_insert") else "claim + complete"
                lines.append(f"- `{bench}`: {cell(ops, 2)} million {what} per second")
        g = "memory_store_claim_complete"
        ratio_line("one thread: `MemoryStore` claim + complete time ÷ the twin's bounded-set insert time",
                   f"{g}/1_thread", f"{g}/bounded_set_insert")
        if lines:
            w("\n".join(lines) + "\n")
        data = {b: list(micro[b].values()) for b in micro}
        keys = sorted(micro, key=bench_order)
        if bar_chart(folder / "micro.png", f"criterion: time per iteration, median of {plural(len(mrounds), 'round')}, "
                     f"whiskers min–max, dots = rounds\n{folder.name}", "ns per iteration (log scale)",
                     keys, {k: k for k in keys}, data, 0, log=True):
            w("![criterion time per iteration](micro.png)\n")
        w("Raw files: " + ", ".join(
            f"[round {r}](criterion/round-{r}/) (criterion's JSON per benchmark; its output in "
            f"[verify](criterion/round-{r}/verify.txt), [layer](criterion/round-{r}/layer.txt), "
            f"[store](criterion/round-{r}/store.txt))" for r in mrounds) + ".\n")

    # ---- soak
    if soak:
        w("## RSS soak\n")
        w("Unique deliveries to a fresh server, its RSS (`VmRSS`) sampled every tenth of the run; one run, "
          "after the rounds ([soak.csv](soak.csv), [soak.txt](soak.txt)).\n")
        keys = list(soak)
        w("| deliveries | " + " | ".join(f"{soak_labels[k]}: RSS MiB" for k in keys) + " |")
        w("|---" * (len(keys) + 1) + "|")
        for i in range(max(len(v) for v in soak.values())):
            cells = []
            for k in keys:
                cells.append(f"{soak[k][i][1] / 1024:.1f}" if i < len(soak[k]) else "")
            n = next(soak[k][i][0] for k in keys if i < len(soak[k]))
            w(f"| {n:,} | " + " | ".join(cells) + " |")
        w("")
        fig, ax = plt.subplots(figsize=(9, 4))
        for k in keys:
            ax.plot([n for n, _ in soak[k]], [kib / 1024 for _, kib in soak[k]], marker="o", label=soak_labels[k])
        ax.set_xlabel("deliveries")
        ax.set_ylabel("RSS MiB")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"RSS during the soak\n{folder.name}", fontsize=11)
        fig.tight_layout()
        fig.savefig(folder / "soak_rss.png", dpi=110)
        plt.close(fig)
        w("![RSS during the soak](soak_rss.png)\n")

    (folder / "summary.md").write_text("\n".join(out))
    print(f"wrote {folder / 'summary.md'}")


if __name__ == "__main__":
    main()
