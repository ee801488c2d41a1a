import subprocess, sys, re, collections
def load(tag, us):
    out = subprocess.run(["perf","report","-i",f"{tag}.data","--no-children","--comm","tokio-rt-worker","--sort","dso,sym","-q","--percent-limit","0"],capture_output=True,text=True).stdout
    d = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m: continue
        pct, dso, kind, sym = m.groups()
        d[(dso, sym.strip())] = float(pct)*us/100
    return d
def cat(dso, sym):
    if 'kernel' in dso: return 'kernel'
    if 'libc' in dso: return 'libc'
    s = sym
    for k in ['sha2','klikit_webhook','klikit_cli','hyper','axum','tower','serde_json','metrics','tokio','http::','bytes','tracing','hashbrown','hmac','core::','alloc::','std::','memchr']:
        if k in s: return k
    return 'other:'+dso
a = load(sys.argv[1], float(sys.argv[2])); b = load(sys.argv[3], float(sys.argv[4]))
ca = collections.Counter(); cb = collections.Counter()
for (dso,sym),v in a.items(): ca[cat(dso,sym)] += v
for (dso,sym),v in b.items(): cb[cat(dso,sym)] += v
print(f"{'category':24} {'A us':>7} {'B us':>7} {'B-A':>7}")
for k in sorted(set(ca)|set(cb), key=lambda k: -(cb[k]-ca[k])):
    print(f"{k:24} {ca[k]:7.2f} {cb[k]:7.2f} {cb[k]-ca[k]:7.2f}")
print(f"{'total':24} {sum(ca.values()):7.2f} {sum(cb.values()):7.2f}")
if len(sys.argv) > 5:
    n = int(sys.argv[5])
    keys = set(a)|set(b)
    diff = sorted(keys, key=lambda k: -(b.get(k,0)-a.get(k,0)))
    print("\n-- symbols most above A")
    for k in diff[:n]: print(f"{b.get(k,0)-a.get(k,0):7.3f} {a.get(k,0):7.3f} {b.get(k,0):7.3f} {k[0][:12]} {k[1][:110]}")
    print("\n-- symbols most below A")
    for k in diff[-n:]: print(f"{b.get(k,0)-a.get(k,0):7.3f} {a.get(k,0):7.3f} {b.get(k,0):7.3f} {k[0][:12]} {k[1][:110]}")
