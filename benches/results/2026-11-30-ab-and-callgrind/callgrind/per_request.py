#!/usr/bin/env python3
"""Per-request cost of each function, from the callgrind files of this folder.

For each server, two runs under callgrind were made, one with 3 s and one with
9 s of measured load (plus 1 s warm-up each); the difference between the two
runs, divided by the difference in responses written (calls of hyper's
`Http1Transaction::encode`, once per response), is the cost of one request
with start-up, warm-up and shutdown cancelled out.

    python3 per_request.py                 # totals per request, every server
    python3 per_request.py diff I1mr       # functions, receiver at 92250bd minus twin
    python3 per_request.py diff Ir new     # the same for the receiver with this session's changes

The .txt files are `callgrind_annotate --threshold=100 --show=Ir,I1mr,D1mr,D1mw <file>`.
"""
import collections, glob, os, re, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
EVENTS = ["Ir", "I1mr", "D1mr", "D1mw"]


def responses(path):
    names, cfn, calls = {}, None, 0
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, i, name = m.groups()
            if name:
                names[i] = name
            if kind == "cfn":
                cfn = i
        elif line.startswith("calls=") and names.get(cfn, "").endswith("Http1Transaction>::encode"):
            calls += int(line.split()[0][6:])
    return calls


def functions(path):
    txt = path + ".txt"
    if not os.path.exists(txt):
        out = subprocess.run(["callgrind_annotate", "--threshold=100", "--show=Ir,I1mr,D1mr,D1mw", path],
                             capture_output=True, text=True, check=True).stdout
        open(txt, "w").write(out)
    d = collections.defaultdict(lambda: [0, 0, 0, 0])
    num = r"([\d,]+)\s*(?:\([^)]*\))?\s+"
    for line in open(txt):
        m = re.match(r"^\s*" + num * 4 + r"(.*?:.*?)(?: \[.*\])?$", line)
        if m:
            name = re.sub(r"'\d+$", "", m.group(5).split(":", 1)[1])
            for i in range(4):
                d[name][i] += int(m.group(i + 1).replace(",", ""))
    return d


def per_request(short_prefix, long_prefix, server):
    short = glob.glob(f"{HERE}/{short_prefix}.{server}.*[0-9]")[0]
    long = glob.glob(f"{HERE}/{long_prefix}.{server}.*[0-9]")[0]
    n = responses(long) - responses(short)
    a, b = functions(short), functions(long)
    return n, {k: [(b[k][i] - a[k][i]) / n for i in range(4)] for k in set(a) | set(b)}


SERVERS = {
    "twin": ("c3", "c9", "bare_twin"),
    "old": ("c3", "c9", "receiver"),   # the receiver at 92250bd (with the experiment toggles, all off)
    "new": ("n3", "n9", "receiver"),   # the receiver with this session's changes
}

if __name__ == "__main__":
    data = {k: per_request(*v) for k, v in SERVERS.items()}
    if len(sys.argv) < 2:
        for k, (n, d) in data.items():
            tot = [sum(v[i] for v in d.values()) for i in range(4)]
            print(f"{k:5s} requests {n:5d}  " + "  ".join(f"{e} {t:9.0f}" for e, t in zip(EVENTS, tot)))
    else:
        idx = EVENTS.index(sys.argv[2])
        which = sys.argv[3] if len(sys.argv) > 3 else "old"
        r, t = data[which][1], data["twin"][1]
        keys = sorted(set(r) | set(t), key=lambda k: -(r.get(k, [0] * 4)[idx] - t.get(k, [0] * 4)[idx]))
        for k in keys[:40]:
            rv, tv = r.get(k, [0] * 4), t.get(k, [0] * 4)
            print(f"{rv[idx] - tv[idx]:8.1f}  {which} {rv[idx]:8.1f}  twin {tv[idx]:8.1f}  {k[:120]}")
