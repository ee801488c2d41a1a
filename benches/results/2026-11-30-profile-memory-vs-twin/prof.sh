#!/usr/bin/env bash
# usage: prof.sh <config> <tag> [bin-dir]
set -u
cfg=$1; tag=$2; bindir=${3:-/work/main/target/release/examples}
cd /work/main
taskset -c 1 $PWD/target/release/examples/load --configs $cfg --round 1 --bin-dir $bindir --warmup 1 --duration 8 --log-dir /tmp/loadlogs --work-dir /tmp/lw > /tmp/prof/$tag.load.txt 2>&1 &
lp=$!
sleep 2.5
perf record -q -C 0 -F 2999 -o /tmp/prof/$tag.data -- sleep 5 >/dev/null 2>&1
wait $lp
cat /tmp/prof/$tag.load.txt | grep "round 1"
