#!/usr/bin/env bash
cfg=$1; tag=$2; bin=$3; bindir=${4:-/work/main/target/release/examples}
cd /work/main
taskset -c 1 $PWD/target/release/examples/load --configs $cfg --round 1 --bin-dir $bindir --warmup 1 --duration 5 --log-dir /tmp/loadlogs --work-dir /tmp/lw > /tmp/prof/$tag.load.txt 2>&1 &
lp=$!
sleep 2
pid=$(pgrep -n -x $bin)
timeout -s INT 2 strace -c -f -p $pid -o /tmp/prof/$tag.strace.txt
wait $lp
grep "round 1 #" /tmp/prof/$tag.load.txt
