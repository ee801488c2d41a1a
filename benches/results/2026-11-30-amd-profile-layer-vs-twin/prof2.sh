#!/usr/bin/env bash
# usage: prof2.sh <config> <tag> <bindir> [ENV=VAL]
cfg=$1; tag=$2; bindir=$3; envs=${4:-}
cd /work/main
env $envs taskset -c 1 /tmp/var-base/load --configs $cfg --round 1 --bin-dir $bindir --warmup 1 --duration 7 --log-dir /tmp/loadlogs --work-dir /tmp/lw > /tmp/prof/$tag.load.txt 2>&1 &
lp=$!
sleep 2.5
perf record -q -C 0 -F 2999 -o /tmp/prof/$tag.data -- sleep 4 >/dev/null 2>&1
wait $lp
perf script -i /tmp/prof/$tag.data -F comm,ip,sym,dso 2>/dev/null | grep tokio-rt-worker > /tmp/prof/$tag.script.txt
grep "round 1 #" /tmp/prof/$tag.load.txt | sed "s/^/$tag /"
