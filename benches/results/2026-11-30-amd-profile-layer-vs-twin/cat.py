import sys, collections, re
def load(f, cpu):
    c = collections.Counter(); n=0
    for line in open(f):
        parts = line.split(None, 2)
        if len(parts) < 3: continue
        rest = parts[2].strip()
        m = re.match(r'(.*) \((.*)\)$', rest)
        sym, dso = (m.group(1), m.group(2)) if m else (rest, '?')
        if 'kernel' in dso: cat='kernel'
        elif 'libc' in dso or 'ld-linux' in dso: cat='libc'
        elif 'vdso' in dso: cat='vdso'
        elif 'serde' in sym or 'payload' in sym or 'from_utf8' in sym: cat='serde/json'
        elif 'sha2' in sym or 'hmac' in sym or 'digest' in sym or 'signature' in sym or 'subtle' in sym or 'xxh' in sym: cat='crypto/digest'
        elif 'store::memory' in sym or 'bounded_set' in sym or 'hashbrown' in sym or 'hash' in sym.lower(): cat='store/hash'
        elif 'tokio' in sym: cat='tokio'
        elif 'hyper' in sym: cat='hyper'
        elif 'axum' in sym or 'tower' in sym: cat='axum/tower'
        elif 'http::' in sym or 'http_body' in sym: cat='http'
        elif 'klikit_webhook' in sym or 'klikit_cli' in sym: cat='klikit other'
        elif 'metrics' in sym: cat='metrics'
        elif 'bytes' in sym: cat='bytes'
        else: cat='other:'+dso.split('/')[-1]
        c[cat]+=1; n+=1
    return {k: v/n*cpu*1000 for k,v in c.items()}
a=load(sys.argv[1], float(sys.argv[2])); b=load(sys.argv[3], float(sys.argv[4]))
for k in sorted(set(a)|set(b), key=lambda k:-max(a.get(k,0),b.get(k,0))):
    print(f"{a.get(k,0):8.0f} {b.get(k,0):8.0f} {b.get(k,0)-a.get(k,0):+8.0f}  {k}")
