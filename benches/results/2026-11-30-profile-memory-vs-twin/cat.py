import re,collections,sys,os,gzip
HERE=os.path.dirname(os.path.abspath(__file__))
def cat(dso, s):
    if 'kernel' in dso: return 'kernel'
    if 'libc' in dso or 'vdso' in dso: return dso
    rules=[('sha2','sha256'),('hex::','hex'),('serde_json','serde_json'),('payload','payload-deser'),('store::memory','memstore'),('NullStore','memstore'),('hashbrown','hashmap'),('foldhash','hashmap'),('sip','hashmap'),('bounded_set','memstore'),('metrics','metrics'),('quanta','metrics'),('hyper','hyper'),('httparse','hyper'),('http::','http'),('axum','axum'),('tower','tower'),('tokio','tokio'),('xxh','xxh3'),('klikit_webhook','layer'),('klikit_cli','app'),('bare_twin','app'),('bytes','bytes'),('utf8','utf8'),('tracing','tracing')]
    for k,v in rules:
        if k in s: return v
    return 'other'
runs=[]
for a in sys.argv[1:]:
    tag,us=a.split('=')
    n=0;c=collections.Counter()
    for l in gzip.open(f'{HERE}/perf/{tag}.script.txt.gz','rt'):
        n+=1
        m=re.match(r'\s*tokio-rt-worker\s+[0-9a-f]+\s+(.*)\s+\((.*)\)\s*$', l)
        if m: c[cat(m.group(2).split('/')[-1], m.group(1).strip())]+=1
    runs.append((tag,{k:v*float(us)/n for k,v in c.items()}))
keys=sorted(set().union(*[set(r[1]) for r in runs]), key=lambda k:-runs[0][1].get(k,0))
print(f"{'':14}"+"".join(f"{t:>8}" for t,_ in runs))
for k in keys: print(f"{k:14}"+"".join(f"{r.get(k,0):8.2f}" for _,r in runs))
print(f"{'total':14}"+"".join(f"{sum(r.values()):8.2f}" for _,r in runs))
