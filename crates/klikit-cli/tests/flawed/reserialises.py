"""Flaw: verifies the signature over a re-serialised body, as `JSON.stringify(req.body)` does in Express: parse,
then dump compactly, keeping key order and non-ASCII text. The shipped fixtures are compact already and survive
the round trip, so only `klikit check`'s raw-body check fails."""

import json

from docs_style import KlikitHandler, serve


class Reserialising(KlikitHandler):
    def signed_bytes(self, raw):
        return json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False).encode()


if __name__ == "__main__":
    serve(Reserialising)
