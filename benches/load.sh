#!/usr/bin/env bash
# The load benchmark in one command:
#
#     bash benches/load.sh
#
# Builds the example receiver, the bare twin and the load driver in release
# mode, sets up a throwaway venv with Flask, gunicorn and matplotlib under
# /tmp (skip with NO_PYTHON=1), then runs the driver pinned to CPU 1 (the
# servers it starts are pinned to CPU 0), prints every run, the medians and
# ratios, the RSS soak, and draws benches/requests_per_second.png.
#
# Knobs: REPS (3), DURATION (5 s measured per run), WARMUP (1 s),
# CONNECTIONS (32), SOAK (200000 deliveries, 0 to skip), VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
VENV="${VENV:-/tmp/klikit-bench-venv}"

# The receiver is the klikit-cli crate's example (its default features take
# every KLIKIT_STORE); cargo puts every member's examples in one folder.
cargo build --release -p klikit-cli --example receiver
cargo build --release -p klikit-webhook --example bare_twin --example load

flask=()
if [[ "${NO_PYTHON:-0}" != 1 ]]; then
  if [[ ! -x "$VENV/bin/gunicorn" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet flask gunicorn matplotlib
  fi
  flask=(--flask-venv "$VENV")
fi

CSV="$CARGO_TARGET_DIR/load.csv"
taskset -c 1 "$CARGO_TARGET_DIR/release/examples/load" \
  --reps "${REPS:-3}" --duration "${DURATION:-5}" --warmup "${WARMUP:-1}" \
  --connections "${CONNECTIONS:-32}" --soak "${SOAK:-200000}" --server-cpu 0 \
  --csv "$CSV" "${flask[@]}" | tee "$CARGO_TARGET_DIR/load.txt"

if [[ "${NO_PYTHON:-0}" != 1 ]]; then
  "$VENV/bin/python" benches/plot.py "$CSV" benches/requests_per_second.png
fi
