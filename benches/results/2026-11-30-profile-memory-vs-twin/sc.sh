#!/usr/bin/env bash
cfg=$1; tag=$2; bindir=${3:-/work/main/target/release/examples}
cd /work/main
taskset -c 1 $PWD/target/release/examples/load --configs $cfg --round 1 --bin-dir $bindir --warmup 1 --duration 6 --log-dir /tmp/loadlogs --work-dir /tmp/lw > /tmp/prof/$tag.load.txt 2>&1 &
lp=$!
sleep 2
nstat -n >/dev/null; nstat -a >/dev/null 2>&1 ; nstat -n
sleep 3
nstat > /tmp/prof/$tag.nstat.txt
wait $lp
grep "round 1 #" /tmp/prof/$tag.load.txt
