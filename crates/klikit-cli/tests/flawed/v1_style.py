"""A Klikit Partner API v1 receiver in the Python standard library, written the way docs_style.py writes today's
contract, and correct except that its seen ids live in memory: `klikit check --scheme klikit-v1` passes everything
but --restart.

It checks the headers (400 {"error":"missing klikit headers"}); reads X-Klikit-Signature as `t=<unix>,v1=<hex>`
pairs, keeping every v1 entry (during a rotation Klikit sends two), and compares HMAC-SHA256 over "<t>.<raw body>"
with each in constant time (401 {"error":"invalid signature"}); then refuses a t more than 300 s from its clock
(401 {"error":"timestamp outside the tolerance"}); refuses a body whose event_id differs from X-Klikit-Event-Id
(400); answers a seen event id 200 {"status":"duplicate-ignored"}, and otherwise 200 {"status":"received"}, with the
work in a background thread. It avoids the two bugs of the v1 draft's own Python sample (KLIKIT.md §7): it signs
bytes, not the text of a bytes object, and it does not keep only the last v1= entry.

Run: KLIKIT_WEBHOOK_SECRET=... PORT=8080 python3 v1_style.py   (binds 127.0.0.1)
"""

import hashlib
import hmac
import json
import threading
import time

from docs_style import SECRET, KlikitHandler, serve

TOLERANCE = 300
V1_TYPES = {
    "order.placed.v1",
    "order.updated.v1",
    "order.cancelled.v1",
    "order.amended.v1",
    "order.courier_assigned.v1",
    "order.picked_up.v1",
    "order.delivered.v1",
}


def parse_signature(header):
    """(t as sent, [v1 hex, ...]) from `t=<digits>,v1=<hex>[,v1=<hex>...]`, or None if malformed."""
    timestamp, signatures = None, []
    for pair in header.split(","):
        key, equals, value = pair.strip().partition("=")
        if not equals or not key:
            return None
        if key == "t":
            if timestamp is not None or not value.isdigit():
                return None
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


class V1Handler(KlikitHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        signature = self.headers.get("x-klikit-signature")
        event_id = self.headers.get("x-klikit-event-id")
        event_type = self.headers.get("x-klikit-event")
        if not (signature and event_id and event_type):
            return self.reply(400, {"error": "missing klikit headers"})
        parsed = parse_signature(signature)
        if parsed is None:
            return self.reply(401, {"error": "invalid signature"})
        timestamp, candidates = parsed
        expected = hmac.new(SECRET, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest().encode()
        matched = False
        for candidate in candidates:  # every one, in constant time
            matched |= hmac.compare_digest(expected, candidate.encode())
        if not matched:
            return self.reply(401, {"error": "invalid signature"})
        if not self.timestamp_ok(int(timestamp)):
            return self.reply(401, {"error": "timestamp outside the tolerance"})
        payload = json.loads(raw)
        if payload.get("event_id", event_id) != event_id:
            return self.reply(400, {"error": "event id mismatch"})
        if not self.claim(event_id):
            return self.answer_duplicate()
        threading.Thread(target=self.process, args=(event_type, payload), daemon=True).start()
        self.reply(200, {"status": "received"})

    def timestamp_ok(self, timestamp):
        """At most TOLERANCE seconds before or after this machine's clock."""
        return abs(time.time() - timestamp) <= TOLERANCE

    def process(self, event_type, payload):
        if event_type not in V1_TYPES:
            self.log_message("unknown event type %s: ignored", event_type)


if __name__ == "__main__":
    serve(V1Handler)
