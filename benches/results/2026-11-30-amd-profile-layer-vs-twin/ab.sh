#!/bin/bash
# usage: ab.sh ROUNDS label:bindir:config[:ENV=VAL] ...   (rotates the order each round)
B=/tmp/var-base
R=${1:-3}; shift
vs=("$@"); n=${#vs[@]}
for r in $(seq 1 $R); do
  for i in $(seq 0 $((n-1))); do
    v=${vs[$(( (i + r - 1) % n ))]}
    IFS=: read label bin cfg envs <<< "$v"
    out=$(env $envs taskset -c 1 $B/load --configs $cfg --round 1 --bin-dir $bin --warmup 1 --duration ${DUR:-4} --log-dir /tmp/loadlogs --work-dir /tmp/lw 2>&1 | tail -1)
    rps=$(echo "$out" | grep -o '[0-9]* req/s' | head -1 | cut -d' ' -f1); cpu=$(echo "$out" | grep -o 'server CPU *[0-9.]* µs' | grep -o '[0-9.]*')
    p99=$(echo "$out" | sed -n "s/.*p99 *\([0-9]*\) µs.*/\1/p"); echo "r$r $label $rps $cpu $p99"
  done
done
