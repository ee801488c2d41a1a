import collections,re,sys
def load(f, us):
    c=collections.Counter(); n=0
    for l in open(f):
        n+=1
        m=re.match(r'\s*tokio-rt-worker\s+[0-9a-f]+\s+(.*)\s+\((.*)\)\s*$', l)
        if not m: c[('?','?')]+=1; continue
        c[(m.group(2).split('/')[-1], m.group(1).strip())]+=1
    return {k: v*us/n for k,v in c.items()}, n
a,na=load(sys.argv[1],float(sys.argv[2])); b,nb=load(sys.argv[3],float(sys.argv[4]))
def bydso(d):
    c=collections.Counter()
    for (dso,s),v in d.items(): c[dso]+=v
    return c
print({k: round(v,2) for k,v in bydso(a).most_common(6)}); print({k: round(v,2) for k,v in bydso(b).most_common(6)})
filt = sys.argv[5] if len(sys.argv)>5 else None
a={k:v for k,v in a.items() if not filt or filt in k[0]}; b={k:v for k,v in b.items() if not filt or filt in k[0]}
ks=sorted(set(a)|set(b), key=lambda k: -(b.get(k,0)-a.get(k,0)))
N=int(sys.argv[6]) if len(sys.argv)>6 else 30
for k in ks[:N]: print(f"{b.get(k,0)-a.get(k,0):7.3f} {a.get(k,0):7.3f} {b.get(k,0):7.3f} {k[0][-12:]} {k[1][:100]}")
print("...")
for k in ks[-10:]: print(f"{b.get(k,0)-a.get(k,0):7.3f} {a.get(k,0):7.3f} {b.get(k,0):7.3f} {k[0][-12:]} {k[1][:100]}")
