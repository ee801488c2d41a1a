import sys, re, collections
def load(path):
    samples=[]; cur=None
    for line in open(path):
        if not line.strip():
            if cur is not None: samples.append(cur); cur=None
            continue
        if not line.startswith('\t') and not line.startswith(' '):
            cur=[]; continue
        parts=line.strip().split(' ',1)
        sym=parts[1] if len(parts)>1 else parts[0]
        sym=re.sub(r'\+0x[0-9a-f]+$','',sym)
        cur.append(sym)
    if cur: samples.append(cur)
    return samples  # leaf first
def callees(samples, pat, depth=1):
    r=re.compile(pat); agg=collections.Counter(); n=0
    for s in samples:
        for i in range(len(s)-1,-1,-1):  # outermost first
            if r.search(s[i]):
                n+=1
                key=' <- '.join(reversed(s[max(0,i-depth):i])) if i>0 else '(self)'
                agg[key]+=1
                break
    return n, agg
if __name__=='__main__':
    path, pat = sys.argv[1], sys.argv[2]
    depth=int(sys.argv[3]) if len(sys.argv)>3 else 1
    s=load(path); n,agg=callees(s,pat,depth)
    print(f"{len(s)} samples, {n} ({100*n/len(s):.1f}%) under {pat}")
    for k,v in agg.most_common(30): print(f"{100*v/len(s):6.2f}%  {k[:200]}")
