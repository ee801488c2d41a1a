#!/bin/bash
# usage: exp.sh ROUNDS "label:ENV=..;label2:..." 
B=/work/main/target/release/examples
R=${1:-3}; shift
for r in $(seq 1 $R); do
  for v in "$@"; do
    label=${v%%:*}; envs=${v#*:}; cfg=memory; [ "$label" = twin ] && cfg=twin
    out=$(env $envs taskset -c 1 $B/load --configs $cfg --round 1 --bin-dir ${BIN:-$B} --warmup 1 --duration ${DUR:-3} --log-dir /tmp/loadlogs --work-dir /tmp/lw 2>&1 | tail -1)
    rps=$(echo "$out" | grep -o '[0-9]* req/s' | head -1); cpu=$(echo "$out" | grep -o 'server CPU *[0-9.]* µs' | grep -o '[0-9.]*')
    echo "r$r $label $rps cpu $cpu"
  done
done
