#!/bin/bash
# usage: exp2.sh ROUNDS label:bindir:config ...
B=/work/main/target/release/examples
R=${1:-3}; shift
for r in $(seq 1 $R); do
  for v in "$@"; do
    IFS=: read label bin cfg <<< "$v"
    out=$(taskset -c 1 $B/load --configs $cfg --round 1 --bin-dir $bin --warmup 1 --duration ${DUR:-3} --log-dir /tmp/loadlogs --work-dir /tmp/lw 2>&1 | tail -1)
    rps=$(echo "$out" | grep -o '[0-9]* req/s' | head -1 | cut -d' ' -f1); cpu=$(echo "$out" | grep -o 'server CPU *[0-9.]* µs' | grep -o '[0-9.]*')
    echo "r$r $label $rps $cpu"
  done
done
