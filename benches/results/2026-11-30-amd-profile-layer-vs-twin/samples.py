"""Turns `perf script -F comm,ip,sym,dso` samples of a server into ns per request.

A function's (or category's) ns per request = its samples / all samples x the
run's server CPU µs per request x 1000.

    python3 samples.py categories A.script.txt A_CPU_US B.script.txt B_CPU_US
    python3 samples.py diff       A.script.txt A_CPU_US B.script.txt B_CPU_US [ROWS]
    python3 samples.py top        A.script.txt A_CPU_US REGEX [ROWS]

`categories` and `diff` print A's figure, B's and B - A; `top` lists the
functions whose name or object matches REGEX. perf/categories.txt was made
with `categories` (twinX first, memX second).
"""

import collections
import re
import sys


def samples(path):
    """(symbol without its hash suffix, object) per sample."""
    for line in open(path):
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        rest = parts[2].strip()
        match = re.match(r"(.*) \((.*)\)$", rest)
        symbol, dso = (match.group(1), match.group(2)) if match else (rest, "?")
        symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
        yield re.sub(r"\+0x[0-9a-f]+$", "", symbol), dso


def category(symbol, dso):
    if "kernel" in dso:
        return "kernel"
    if "libc" in dso or "ld-linux" in dso:
        return "libc"
    if "vdso" in dso:
        return "vdso"
    rules = [
        (("serde", "payload", "from_utf8"), "serde/json"),
        (("sha2", "hmac", "digest", "signature", "subtle", "xxh"), "crypto/digest"),
        (("store::memory", "bounded_set", "hashbrown"), "store/hash"),
    ]
    for needles, name in rules:
        if any(n in symbol for n in needles):
            return name
    if "hash" in symbol.lower():
        return "store/hash"
    for needle, name in [("tokio", "tokio"), ("hyper", "hyper"), ("axum", "axum/tower"), ("tower", "axum/tower"),
                         ("http::", "http"), ("http_body", "http"), ("klikit_webhook", "klikit other"),
                         ("klikit_cli", "klikit other"), ("metrics", "metrics"), ("bytes", "bytes")]:
        if needle in symbol:
            return name
    return "other:" + dso.split("/")[-1]


def per_request(path, cpu_us, key):
    counts, total = collections.Counter(), 0
    for symbol, dso in samples(path):
        counts[key(symbol, dso)] += 1
        total += 1
    return {k: v / total * cpu_us * 1000 for k, v in counts.items()}


def compare(argv, key, rows):
    a = per_request(argv[0], float(argv[1]), key)
    b = per_request(argv[2], float(argv[3]), key)
    names = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)) if rows else -max(a.get(k, 0), b.get(k, 0)))
    for k in names[:rows] if rows else names:
        print(f"{a.get(k, 0):8.0f} {b.get(k, 0):8.0f} {b.get(k, 0) - a.get(k, 0):+8.0f}  {k[:150]}")


def main():
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode == "categories":
        compare(argv, category, 0)
    elif mode == "diff":
        compare(argv, lambda symbol, dso: symbol, int(argv[4]) if len(argv) > 4 else 60)
    elif mode == "top":
        pattern = re.compile(argv[2])
        found = per_request(argv[0], float(argv[1]),
                            lambda symbol, dso: symbol if pattern.search(symbol + " " + dso) else None)
        found.pop(None, None)
        for k, v in sorted(found.items(), key=lambda x: -x[1])[: int(argv[3]) if len(argv) > 3 else 40]:
            print(f"{v:7.0f} {k[:160]}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
