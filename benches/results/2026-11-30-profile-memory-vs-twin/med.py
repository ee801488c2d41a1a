import sys,collections,statistics
d=collections.defaultdict(list)
for l in open(sys.argv[1]):
    p=l.split()
    if len(p)==4: d[p[1]].append((float(p[2]),float(p[3])))
base=statistics.median(x[0] for x in d[sys.argv[2]]) if len(sys.argv)>2 else None
for k,v in d.items():
    r=statistics.median(x[0] for x in v); c=statistics.median(x[1] for x in v)
    print(f"{k:12} n={len(v)} rps {r:8.0f} ({min(x[0] for x in v):.0f}-{max(x[0] for x in v):.0f}) cpu {c:5.2f} ({min(x[1] for x in v):.2f}-{max(x[1] for x in v):.2f})" + (f"  x{r/base:.3f}" if base else ""))
