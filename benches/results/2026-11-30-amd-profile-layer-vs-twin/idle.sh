# prints per-200ms busy% of cpu0 and cpu1 for N samples
for i in $(seq 1 ${1:-30}); do
  a=($(grep '^cpu0 ' /proc/stat)); b=($(grep '^cpu1 ' /proc/stat)); sleep 0.2
  c=($(grep '^cpu0 ' /proc/stat)); d=($(grep '^cpu1 ' /proc/stat))
  t0=0; t1=0; for k in 1 2 3 4 5 6 7 8; do t0=$((t0 + c[k]-a[k])); t1=$((t1 + d[k]-b[k])); done
  i0=$(( (c[4]-a[4]) + (c[5]-a[5]) )); i1=$(( (d[4]-b[4]) + (d[5]-b[5]) ))
  printf "%d:%d/%d " $i $((100*(t0-i0)/(t0>0?t0:1))) $((100*(t1-i1)/(t1>0?t1:1)))
done; echo
