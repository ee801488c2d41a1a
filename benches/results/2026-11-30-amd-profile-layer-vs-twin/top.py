import sys, collections, re
f, cpu, pat = sys.argv[1], float(sys.argv[2]), sys.argv[3]
c = collections.Counter(); n=0
for line in open(f):
    parts = line.split(None, 2)
    if len(parts) < 3: continue
    rest = parts[2].strip()
    m = re.match(r'(.*) \((.*)\)$', rest)
    sym, dso = (m.group(1), m.group(2)) if m else (rest, '?')
    sym = re.sub(r'::h[0-9a-f]{16}$', '', sym); n+=1
    if re.search(pat, sym+' '+dso): c[sym]+=1
for k,v in c.most_common(40): print(f"{v/n*cpu*1000:7.0f} {k[:160]}")
