import sys, collections, re
def load(f, cpu):
    c = collections.Counter(); n=0
    for line in open(f):
        parts = line.split(None, 2)
        if len(parts) < 3: continue
        rest = parts[2].strip()
        m = re.match(r'(.*) \((.*)\)$', rest)
        sym, dso = (m.group(1), m.group(2)) if m else (rest, '?')
        sym = re.sub(r'::h[0-9a-f]{16}$', '', sym)
        sym = re.sub(r'\+0x[0-9a-f]+$', '', sym)
        c[sym]+=1; n+=1
    return {k: v/n*cpu*1000 for k,v in c.items()}, n
a, na = load(sys.argv[1], float(sys.argv[2])); b, nb = load(sys.argv[3], float(sys.argv[4]))
keys = set(a)|set(b)
rows = sorted(keys, key=lambda k: -(abs(a.get(k,0)-b.get(k,0))))
print(na, nb)
for k in rows[:int(sys.argv[5]) if len(sys.argv)>5 else 60]:
    print(f"{a.get(k,0):8.0f} {b.get(k,0):8.0f} {b.get(k,0)-a.get(k,0):+8.0f}  {k[:150]}")
