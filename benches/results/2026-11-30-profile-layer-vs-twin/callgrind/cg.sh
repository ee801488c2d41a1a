#!/bin/bash
# usage: cg.sh <bindir> <tag> [config]   -> per-request Ir I1mr D1mr D1mw of the server (9 s minus 3 s runs)
bindir=$1; tag=$2; cfg=${3:-memory}
mkdir -p /tmp/cgv/$tag; rm -f /tmp/cgv/$tag/*
for b in receiver bare_twin; do
cat > /tmp/cgv/$tag/$b <<EOS
#!/bin/bash
exec valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file=/tmp/cgv/$tag/\$CGTAG.$b.%p $bindir/$b "\$@"
EOS
chmod +x /tmp/cgv/$tag/$b; done
for d in 3 9; do CGTAG=k$d taskset -c 1 /tmp/var-base/load --configs $cfg --round 1 --bin-dir /tmp/cgv/$tag --warmup 1 --duration $d --log-dir /tmp/loadlogs --work-dir /tmp/lw >/dev/null 2>&1; done
python3 - "$tag" <<'EOP'
import sys,glob,re,subprocess
tag=sys.argv[1]
def tot(f):
    out=subprocess.run(["callgrind_annotate","--threshold=100","--show=Ir,I1mr,D1mr,D1mw",f],capture_output=True,text=True).stdout
    m=re.search(r"^\s*([\d,]+)\s*(?:\([^)]*\))?\s+([\d,]+)\s*(?:\([^)]*\))?\s+([\d,]+)\s*(?:\([^)]*\))?\s+([\d,]+)\s*(?:\([^)]*\))?\s+\(?PROGRAM TOTALS", out, re.M)
    return [int(x.replace(',','')) for x in m.groups()]
def resp(f):
    names={};cfn=None;calls=0
    for line in open(f,errors="replace"):
        m=re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind,i,name=m.groups()
            if name: names[i]=name
            if kind=="cfn": cfn=i
        elif line.startswith("calls=") and names.get(cfn,"").endswith("Http1Transaction>::encode"):
            calls+=int(line.split()[0][6:])
    return calls
fs={k:glob.glob(f"/tmp/cgv/{tag}/{k}.*.[0-9]*")[0] for k in ("k3","k9")}
a,b=tot(fs["k3"]),tot(fs["k9"]); n=resp(fs["k9"])-resp(fs["k3"])
print(tag, "requests", n, " ".join(f"{e} {(y-x)/n:9.0f}" for e,x,y in zip(["Ir","I1mr","D1mr","D1mw"],a,b)))
EOP
