"""A Klikit receiver written the way Klikit's docs write theirs (the Flask and Express reference receivers), in
the Python standard library.

It checks the headers (400 {"error":"missing klikit headers"}), verifies hex HMAC-SHA256 over the raw body in
constant time (401 {"error":"invalid signature"}), answers a seen event id 200 {"status":"duplicate-ignored"},
and otherwise 200 {"status":"received"}, with the work in a background thread. Unlike the docs' version, the
"seen?" test and the insert happen under one lock, so concurrent copies are processed once.

It is correct except that the seen ids live in memory: `klikit check` passes everything but --restart.
The other receivers in this folder subclass KlikitHandler and each change one thing.

Run: KLIKIT_WEBHOOK_SECRET=... PORT=8080 python3 docs_style.py   (binds 127.0.0.1)
"""

import hashlib
import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["KLIKIT_WEBHOOK_SECRET"].encode()
KNOWN_TYPES = {"klikit.order.created.v2", "klikit.order.status.updated", "klikit.order.cart.updated"}


class KlikitHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, 40 ms per answer
    seen = set()
    lock = threading.Lock()

    def do_GET(self):
        self.reply(200, {"status": "ok"})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        signature = self.headers.get("x-klikit-signature")
        event_id = self.headers.get("x-klikit-event-id")
        event_type = self.headers.get("x-klikit-event-type")
        if not (signature and event_id and event_type):
            return self.reply(400, {"error": "missing klikit headers"})
        expected = hmac.new(SECRET, self.signed_bytes(raw), hashlib.sha256).hexdigest()
        if not self.signature_matches(expected, signature):
            return self.reply(401, {"error": "invalid signature"})
        payload = json.loads(raw)
        refusal = self.refuse(event_type, payload)
        if refusal:
            return self.reply(400, {"error": refusal})
        if not self.claim(event_id):
            return self.answer_duplicate()
        self.before_answer()
        threading.Thread(target=self.process, args=(event_type, payload), daemon=True).start()
        self.reply(200, {"status": "received"})

    # Each flawed receiver overrides one of these.

    def signed_bytes(self, raw):
        """The bytes the signature is checked against: the raw body."""
        return raw

    def signature_matches(self, expected, signature):
        """The whole value, in constant time."""
        return hmac.compare_digest(expected.encode(), signature.encode())

    def refuse(self, event_type, payload):
        """Why to refuse a verified delivery, or None (unknown types are logged and accepted)."""
        return None

    def claim(self, event_id):
        """True if the id is new, and records it: test and insert under one lock."""
        with self.lock:
            new = event_id not in self.seen
            self.seen.add(event_id)
        return new

    def answer_duplicate(self):
        self.reply(200, {"status": "duplicate-ignored"})

    def before_answer(self):
        """Work done before answering: none, it is all in the background."""

    def process(self, event_type, payload):
        if event_type not in KNOWN_TYPES:
            self.log_message("unknown event type %s: ignored", event_type)

    def reply(self, status, payload, headers=()):
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def serve(handler=KlikitHandler):
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    serve()
