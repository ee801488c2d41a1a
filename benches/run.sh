#!/usr/bin/env bash
# The whole benchmark, from a clean checkout, in one command:
#
#     bash benches/run.sh
#
# 1. Builds in release mode: the reference receiver (klikit-cli's example),
#    the hand-written twin and the load driver (examples/bare_twin.rs,
#    examples/load.rs), the criterion benches (benches/{verify,layer,store}.rs).
# 2. Makes a throwaway Python venv under /tmp with matplotlib (for the charts;
#    plus Flask and gunicorn if CONFIGS names flask).
# 3. Runs ROUNDS interleaved rounds. A round runs every load configuration
#    once (examples/load.rs: a fresh server pinned to SERVER_CPU, the driver
#    pinned to DRIVER_CPU, CONNECTIONS keep-alive connections, ~1 KiB signed
#    bodies, unique event ids; the order rotates by one each round), then the
#    three criterion benches once each.
# 4. Runs PAIRS paired runs of the twin and the receiver with the memory store
#    (one right after the other, the first of the two alternating), the
#    measurement of the goal "memory store ahead of the twin": a ratio of
#    about 1 needs more than a few rounds to tell ahead from level.
# 5. Runs the RSS soak (SOAK unique deliveries to the receiver with the memory
#    store and to the twin).
# 6. Writes every raw output, a description of the machine, the charts and a
#    summary.md generated from the raw files (benches/report.py) into
#    benches/results/<YYYY-MM-DD>-<MACHINE>/ (a suffix -2, -3, ... if that
#    folder exists: a run never overwrites another).
#
# Knobs (environment variables, defaults in brackets):
#   ROUNDS [3]          interleaved rounds; every figure is reported as median, min and max over all of them
#   DURATION [5]        seconds measured per configuration and round
#   WARMUP [1]          seconds of load before each measurement
#   CONNECTIONS [32]    keep-alive connections of the driver
#   CONFIGS [twin,memory,sqlite,redis,postgres]
#                       load configurations (examples/load.rs lists them all; also twin-ok,
#                       memory-dup20, twin-dup20, flask)
#   SERVER_CPU [0]      CPU the servers (and the single-threaded criterion benches) are pinned to
#   DRIVER_CPU [1]      CPU the load driver is pinned to
#   MICRO [1]           0 skips the criterion benches
#   MICRO_WARMUP [1] MICRO_TIME [3] MICRO_SAMPLES [50]
#                       criterion's --warm-up-time, --measurement-time and --sample-size per benchmark
#   PAIRS [30]          paired runs of twin and memory after the rounds, 0 skips them (needs both in CONFIGS)
#   PAIR_DURATION [3]   seconds measured per configuration of a pair (WARMUP before each)
#   SOAK [200000]       deliveries of the RSS soak, 0 skips it
#   REDIS_URL [redis://127.0.0.1:6379]
#   DATABASE_URL [postgres://postgres@127.0.0.1:5432/test]
#   BEFORE []           a git commit (e.g. the last one before a store change): its reference receiver is
#                       built too (in a copy of that commit under ${TMPDIR:-/tmp}, target dir
#                       $CARGO_TARGET_DIR/before-<sha>), and the configurations memory-before, sqlite-before,
#                       redis-before, postgres-before run it in the same rounds as the others (added to the
#                       default CONFIGS); summary.md then compares each store with its state at BEFORE
#   BASELINE []         a results folder of an earlier run: without BEFORE, summary.md compares Postgres and
#                       Redis with it
#   MACHINE [<hostname>-<cpu model>-<n>cpu]   the machine's short name in the folder name
#   RESULTS [benches/results/<date>-<MACHINE>]  the output folder
#   VENV [/tmp/klikit-bench-venv]              the Python venv (reused if it has what is needed)
#
# Needs: cargo, taskset, python3 (with venv), redis-cli, psql, sqlite3, and
# Redis and Postgres servers for those configurations. The store of every run
# is fresh and is deleted after the run: a new directory for SQLite (the
# receiver's default store file is created in it), Redis keys under
# klikit:dedup:<run id>-r<round>-, a Postgres schema klikit_bench_<run id>_r<round>.
# If a run is interrupted, these may be left behind; their names are in run.txt.
#
# A short check of the harness (not a measurement):
#     ROUNDS=1 DURATION=1 WARMUP=0.5 MICRO_TIME=0.5 MICRO_WARMUP=0.2 MICRO_SAMPLES=10 SOAK=20000 bash benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
CONNECTIONS="${CONNECTIONS:-32}"
BEFORE="${BEFORE:-}"
CONFIGS="${CONFIGS:-twin,memory,sqlite,redis,postgres${BEFORE:+,memory-before,sqlite-before,redis-before,postgres-before}}"
SERVER_CPU="${SERVER_CPU:-0}"
DRIVER_CPU="${DRIVER_CPU:-1}"
MICRO="${MICRO:-1}"
MICRO_WARMUP="${MICRO_WARMUP:-1}"
MICRO_TIME="${MICRO_TIME:-3}"
MICRO_SAMPLES="${MICRO_SAMPLES:-50}"
PAIRS="${PAIRS:-30}"
PAIR_DURATION="${PAIR_DURATION:-3}"
SOAK="${SOAK:-200000}"
VENV="${VENV:-/tmp/klikit-bench-venv}"
BASELINE="${BASELINE:-}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

say() { printf '== %s\n' "$*" >&2; }
# Appends "<what>: <seconds since the last call> s" to run.txt.
PHASE_START=$(date +%s)
phase() { local now; now=$(date +%s); echo "time, $1: $((now - PHASE_START)) s" >>"$RESULTS/run.txt"; PHASE_START=$now; }
die() { printf 'benches/run.sh: %s\n' "$*" >&2; exit 1; }
has_config() { [[ ",$CONFIGS," == *",$1,"* ]]; }

# ---- preflight: fail before building if something the run needs is missing
for tool in cargo rustc taskset python3 lscpu; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$PAIRS" =~ ^(0|[1-9][0-9]*)$ ]] || die "PAIRS must be 0 or a positive integer"
for cpu in "$SERVER_CPU" "$DRIVER_CPU"; do
  taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (this machine has $(nproc) CPUs)"
done
[[ "$SERVER_CPU" != "$DRIVER_CPU" ]] || say "warning: server and driver share CPU $SERVER_CPU"
if has_config sqlite; then
  command -v sqlite3 >/dev/null || die "sqlite3 is not on PATH (it counts the SQLite store's records)"
fi
if has_config redis; then
  command -v redis-cli >/dev/null || die "redis-cli is not on PATH"
  [[ "$(redis-cli -u "$REDIS_URL" ping 2>&1)" == PONG ]] || die "no Redis answers at REDIS_URL=$REDIS_URL"
fi
if has_config postgres; then
  command -v psql >/dev/null || die "psql is not on PATH"
  psql "$DATABASE_URL" -X -qtAc 'SELECT 1' >/dev/null || die "no Postgres answers at DATABASE_URL"
fi
BEFORE_SHA=""
if [[ -n "$BEFORE" ]]; then
  BEFORE_SHA=$(git rev-parse --verify --quiet "$BEFORE^{commit}") || die "BEFORE=$BEFORE is not a commit of this repository"
fi
if [[ "$CONFIGS" == *-before* && -z "$BEFORE_SHA" ]]; then die "CONFIGS names a *-before configuration: set BEFORE"; fi
if [[ -n "$BASELINE" ]]; then
  compgen -G "$BASELINE/load/round-*.csv" >/dev/null || die "BASELINE=$BASELINE holds no load/round-*.csv"
fi

# ---- the results folder
if [[ -z "${MACHINE:-}" ]]; then
  model=$(lscpu | sed -n 's/^Model name: *//p' | head -1 | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '-' \
    | sed -e 's/--*/-/g' -e 's/^-//' -e 's/-$//' | cut -c1-24)
  MACHINE="$(hostname -s)-${model:-cpu}-$(nproc)cpu"
fi
if [[ -z "${RESULTS:-}" ]]; then
  RESULTS="benches/results/$(date -u +%F)-$MACHINE"
  n=2
  base="$RESULTS"
  while [[ -e "$RESULTS" ]]; do RESULTS="$base-$n"; n=$((n + 1)); done
fi
[[ ! -e "$RESULTS" ]] || die "$RESULTS exists: a run never overwrites another"
mkdir -p "$RESULTS/load/logs"
RESULTS=$(cd "$RESULTS" && pwd)
RUN_ID="$(date -u +%Y%m%d%H%M%S)$(printf '%04x' $((RANDOM)))"
START=$(date +%s)
say "results: $RESULTS (run id $RUN_ID)"

{
  echo "run id: $RUN_ID"
  echo "started: $(date -u +%FT%TZ)"
  echo "command: bash benches/run.sh"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uncommitted changes: $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) files"
  git status --porcelain --untracked-files=no 2>/dev/null | sed 's/^/  /'
  echo "knobs: ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS CONFIGS=$CONFIGS"
  echo "       SERVER_CPU=$SERVER_CPU DRIVER_CPU=$DRIVER_CPU MICRO=$MICRO MICRO_WARMUP=$MICRO_WARMUP MICRO_TIME=$MICRO_TIME MICRO_SAMPLES=$MICRO_SAMPLES PAIRS=$PAIRS PAIR_DURATION=$PAIR_DURATION SOAK=$SOAK"
  echo "       BEFORE=${BEFORE:-none}${BEFORE_SHA:+ ($BEFORE_SHA)} BASELINE=${BASELINE:-none}"
  echo "stores: SQLite in a fresh directory per round under ${TMPDIR:-/tmp}/klikit-bench-$RUN_ID;"
  echo "        Redis keys klikit:dedup:$RUN_ID-r<round>-*; Postgres schema klikit_bench_${RUN_ID}_r<round>"
  echo "        paired runs (memory store and twin only): run id ${RUN_ID}p"
  echo "        (URLs not recorded: they may hold passwords)"
} >"$RESULTS/run.txt"

{
  echo "## hostname"; hostname
  echo; echo "## uname -a"; uname -a
  echo; echo "## lscpu"; lscpu
  echo; echo "## free -m"; free -m 2>/dev/null || true
  echo; echo "## rustc -Vv"; rustc -Vv
  echo; echo "## cargo -V"; cargo -V
  echo; echo "## python3 -V"; python3 -V 2>&1
  if has_config redis; then echo; echo "## redis server"; redis-cli -u "$REDIS_URL" info server | grep -E '^(redis_version|os|arch_bits|process_id|tcp_port):' | tr -d '\r'; fi
  if has_config postgres; then echo; echo "## postgres server"; psql "$DATABASE_URL" -X -qtAc 'SELECT version()'; psql "$DATABASE_URL" -X -qtAc "SELECT name || '=' || setting FROM pg_settings WHERE name IN ('synchronous_commit','fsync','shared_buffers','max_connections')"; fi
  if has_config sqlite; then echo; echo "## sqlite3 (the CLI that counts records; the store uses rusqlite's bundled SQLite)"; sqlite3 --version; fi
  echo; echo "## load average before (1, 5, 15 min, runnable/total, last pid)"; cat /proc/loadavg
} >"$RESULTS/machine.txt"

# ---- build
say "building (release); output in build.log"
phase "setup"
{
  cargo build --release -p klikit-cli --example receiver
  cargo build --release -p klikit-webhook --example bare_twin --example load
  if [[ "$MICRO" == 1 ]]; then cargo bench -p klikit-webhook --bench verify --bench layer --bench store --no-run; fi
  if [[ -n "$BEFORE_SHA" ]]; then
    # The receiver as it was at BEFORE, from that commit's files and lock file.
    before_src="${TMPDIR:-/tmp}/klikit-before-$BEFORE_SHA"
    if [[ ! -f "$before_src/Cargo.lock" ]]; then
      rm -rf "$before_src" && mkdir -p "$before_src"
      git archive "$BEFORE_SHA" | tar -x -C "$before_src"
    fi
    (cd "$before_src" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/before-$BEFORE_SHA" \
      cargo build --release --locked -p klikit-cli --example receiver)
  fi
} >"$RESULTS/build.log" 2>&1 || { tail -30 "$RESULTS/build.log" >&2; die "build failed (see $RESULTS/build.log)"; }
phase "build"

# ---- the Python venv for the charts
packages=(matplotlib)
imports=matplotlib
if has_config flask; then packages+=(flask gunicorn); imports+=", flask, gunicorn"; fi
if ! "$VENV/bin/python" -c "import $imports" 2>/dev/null; then
  say "making the venv $VENV (${packages[*]})"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
fi
"$VENV/bin/python" -m pip freeze --disable-pip-version-check >"$RESULTS/python-packages.txt"
phase "venv"
load_args=()
if has_config flask; then load_args=(--flask-venv "$VENV"); fi
if [[ -n "$BEFORE_SHA" ]]; then load_args+=(--before-bin-dir "$CARGO_TARGET_DIR/before-$BEFORE_SHA/release/examples"); fi

LOAD="$CARGO_TARGET_DIR/release/examples/load"
load() {
  taskset -c "$DRIVER_CPU" "$LOAD" --run-id "$RUN_ID" --server-cpu "$SERVER_CPU" \
    --warmup "$WARMUP" --duration "$DURATION" --connections "$CONNECTIONS" \
    --log-dir "$RESULTS/load/logs" "${load_args[@]}" "$@"
}

# ---- the interleaved rounds
benches=(verify layer store)
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round load: $(cat /proc/loadavg)" >>"$RESULTS/loadavg.txt"
  say "round $round/$ROUNDS: load ($CONFIGS)"
  load --round "$round" --configs "$CONFIGS" --csv "$RESULTS/load/round-$round.csv" \
    | tee "$RESULTS/load/round-$round.txt"
  phase "round $round load"
  if [[ "$MICRO" == 1 ]]; then
    echo "round $round micro: $(cat /proc/loadavg)" >>"$RESULTS/loadavg.txt"
    dir="$RESULTS/criterion/round-$round"
    mkdir -p "$dir"
    # Rotate the benches' order too.
    for i in 0 1 2; do
      bench=${benches[$(((round - 1 + i) % 3))]}
      # verify and layer run on one thread: pin them like the servers. store
      # measures one thread and every core, so it is not pinned.
      pin=(taskset -c "$SERVER_CPU")
      [[ "$bench" != store ]] || pin=()
      say "round $round/$ROUNDS: criterion $bench"
      CRITERION_HOME="$dir" "${pin[@]}" cargo bench -p klikit-webhook --bench "$bench" -- \
        --warm-up-time "$MICRO_WARMUP" --measurement-time "$MICRO_TIME" --sample-size "$MICRO_SAMPLES" --noplot \
        >"$dir/$bench.txt" 2>&1 || { tail -20 "$dir/$bench.txt" >&2; die "criterion $bench failed"; }
    done
    # criterion also copies each result to base/ (its default baseline): the same files twice.
    find "$dir" -type d -name base -prune -exec rm -rf {} +
    phase "round $round criterion"
  fi
done

# ---- paired runs: the twin and the memory store one right after the other
# The driver rotates its configurations by the round number, so pair 1 runs
# the twin first, pair 2 the memory store first, and so on. Each pair's ratio
# compares two runs a few seconds apart; summary.md gives their median with a
# distribution-free 95 % confidence interval and a sign test.
if [[ "$PAIRS" != 0 ]] && has_config twin && has_config memory; then
  echo "pairs: $(cat /proc/loadavg)" >>"$RESULTS/loadavg.txt"
  mkdir -p "$RESULTS/pairs/logs"
  say "pairs: $PAIRS paired runs of twin and memory, ${PAIR_DURATION} s each"
  for pair in $(seq 1 "$PAIRS"); do
    load --round "$pair" --configs twin,memory --duration "$PAIR_DURATION" --run-id "${RUN_ID}p" \
      --log-dir "$RESULTS/pairs/logs" --csv "$RESULTS/pairs/pair-$pair.csv" | tee -a "$RESULTS/pairs/pairs.txt"
  done
  phase "pairs"
elif [[ "$PAIRS" != 0 ]]; then
  say "warning: PAIRS=$PAIRS but CONFIGS lacks twin or memory: no paired runs"
  echo "pairs: none (CONFIGS lacks twin or memory)" >>"$RESULTS/run.txt"
fi

# ---- the RSS soak
if [[ "$SOAK" != 0 ]]; then
  echo "soak: $(cat /proc/loadavg)" >>"$RESULTS/loadavg.txt"
  say "soak: $SOAK deliveries each to the receiver (memory store) and the twin"
  load --round 1 --configs "" --soak "$SOAK" --soak-csv "$RESULTS/soak.csv" | tee "$RESULTS/soak.txt"
  phase "soak"
fi

{ echo; echo "## load average after"; cat /proc/loadavg; } >>"$RESULTS/machine.txt"
echo "finished: $(date -u +%FT%TZ)" >>"$RESULTS/run.txt"
echo "wall time (all but the report): $(($(date +%s) - START)) s" >>"$RESULTS/run.txt"

# ---- summary.md and the charts, from the files above only
say "report"
report_args=("$RESULTS")
if [[ -n "$BASELINE" ]]; then report_args+=(--baseline "$BASELINE"); fi
"$VENV/bin/python" benches/report.py "${report_args[@]}"
say "done in $(($(date +%s) - START)) s: $RESULTS/summary.md"
