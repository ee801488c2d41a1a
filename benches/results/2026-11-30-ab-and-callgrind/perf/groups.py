import os
import sys, re, collections
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from folded import load
path=sys.argv[1]; cpu=float(sys.argv[2])
cats=[('worker', r'receiver::worker::worker'),
      ('pg: batch/statements', r'klikit_webhook::store::postgres'),
      ('tokio_postgres', r'tokio_postgres::|postgres_protocol|deadpool'),
      ('layer deliver (other)', r'service::deliver'),
      ('layer.call', r'KlikitWebhookService.*::call$'),
      ('hyper service fut', r'hyper_util::service::oneshot::Oneshot'),
      ('hyper read_head', r'poll_read_head'),
      ('hyper write/flush', r'poll_flush|poll_write_vectored'),
      ('hyper other', r'hyper::'),
      ('tokio other', r'tokio::'),
]
s=load(path); agg=collections.Counter()
for smp in s:
    for name,p in cats:
        if any(re.search(p,f) for f in smp): agg[name]+=1; break
    else: agg['other']+=1
for k,v in sorted(agg.items(), key=lambda x:-x[1]): print(f"{k:24s} {100*v/len(s):5.1f}%  {cpu*v/len(s):5.1f} us/req")
