#!/usr/bin/env bash
# The criterion micro-benchmarks, repeated and interleaved, with the medians
# and ratios the issue asks for. One command:
#
#     bash benches/micro.sh            # REPS=3 by default
#
# Each repetition runs the verify, layer and store benches once (criterion:
# 1 s warm-up, 3 s measurement, 50 samples); after each bench the median of
# its samples is appended to $OUT. The summary takes the median across
# repetitions and shows the spread (min..max) so the noise is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
REPS="${REPS:-3}"
OUT="${OUT:-$CARGO_TARGET_DIR/micro.tsv}"
ARGS=(--warm-up-time 1 --measurement-time 3 --sample-size 50 --noplot)

cargo bench --all-features --no-run >/dev/null 2>&1 || cargo bench --all-features --no-run
: >"$OUT"
for rep in $(seq 1 "$REPS"); do
  for bench in verify layer store; do
    echo "== rep $rep/$REPS: $bench" >&2
    cargo bench --all-features --bench "$bench" -- "${ARGS[@]}" >"$CARGO_TARGET_DIR/micro-$bench-$rep.log" 2>&1
    python3 - "$CARGO_TARGET_DIR/criterion" "$rep" "$bench" >>"$OUT" <<'PY'
import json, pathlib, sys
root, rep, bench = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
groups = {"verify": "verify", "layer": "router_oneshot_1KiB", "store": "memory_store_claim_complete"}
for est in sorted((root / groups[bench]).glob("**/new/estimates.json")):
    name = "/".join(est.relative_to(root).parts[:-2])
    median_ns = json.loads(est.read_text())["median"]["point_estimate"]
    print(f"{rep}\t{name}\t{median_ns:.3f}")
PY
  done
done
python3 - "$OUT" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    rep, name, ns = line.split("\t")
    runs[name].append(float(ns))
med = {k: statistics.median(v) for k, v in runs.items()}
def fmt(ns):
    return f"{ns/1e6:.3f} ms" if ns >= 1e6 else f"{ns/1e3:.3f} µs" if ns >= 1e3 else f"{ns:.1f} ns"
print(f"{'benchmark':55} {'median':>12} {'spread (min..max)':>28}  runs")
for k in sorted(runs):
    v = runs[k]
    spread = (max(v) - min(v)) / med[k] * 100
    print(f"{k:55} {fmt(med[k]):>12} {fmt(min(v)) + '..' + fmt(max(v)):>28}  {len(v)} ({spread:.1f} %)")
print()
for size in ["64B", "1KiB", "16KiB", "1MiB"]:
    v, r = med.get(f"verify/verifier/{size}"), med.get(f"verify/raw_hmac/{size}")
    if v and r:
        size_b = {"64B": 64, "1KiB": 1024, "16KiB": 16384, "1MiB": 1 << 20}[size]
        print(f"verify {size:>6}: Verifier {size_b / v * 1e3:8.1f} MB/s, raw HMAC {size_b / r * 1e3:8.1f} MB/s, "
              f"throughput ratio Verifier/raw = {r / v:.3f} (target >= 0.95 at 1 MiB)")
g = "router_oneshot_1KiB"
if f"{g}/layer_memory_store" in med:
    l, b, h = med[f"{g}/layer_memory_store"], med[f"{g}/bare"], med.get(f"{g}/by_hand")
    print(f"router oneshot 1 KiB: layer+MemoryStore {fmt(l)}, bare {fmt(b)} (+{fmt(l - b)} per request, {l / b:.2f}x)"
          + (f", by hand {fmt(h)} (layer/by hand {l / h:.2f}x)" if h else ""))
g = "memory_store_claim_complete"
for k in sorted(med):
    if k.startswith(g):
        print(f"{k.split('/')[-1]}: {1e9 / med[k] / 1e6:.2f} M claim+complete/s")
PY
