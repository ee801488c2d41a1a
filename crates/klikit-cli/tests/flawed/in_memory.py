"""Flaw: keeps the seen event ids in a dict in memory, so a restart forgets them and Klikit's next retry is
processed again. Otherwise it is better than the docs' receiver: 413 for bodies over 1 MiB before reading them,
403 for a bad signature, 202 {"accepted":true} once the event is handed to a background thread, 409 with
Retry-After while that thread works, 200 {"duplicate":true} once it is done. Only `klikit check --restart` fails."""

import hashlib
import hmac
import json
import threading
import time

from docs_style import SECRET, KlikitHandler, serve

LIMIT = 1024 * 1024


class InMemory(KlikitHandler):
    state = {}  # event id -> "in-flight" | "done"

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        if length > LIMIT:
            self.close_connection = True
            return self.reply(413, {"error": "body too large"})
        raw = self.rfile.read(length)
        signature = self.headers.get("x-klikit-signature", "")
        event_id = self.headers.get("x-klikit-event-id")
        if not (signature and event_id and self.headers.get("x-klikit-event-type")):
            return self.reply(400, {"error": "missing header"})
        expected = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return self.reply(403, {"error": "forbidden"})
        with self.lock:
            state = self.state.get(event_id)
            if state is None:
                self.state[event_id] = "in-flight"
        if state == "in-flight":
            return self.reply(409, {"error": "in flight"}, [("retry-after", "1")])
        if state == "done":
            return self.reply(200, {"duplicate": True})
        threading.Thread(target=self.work, args=(event_id, json.loads(raw)), daemon=True).start()
        self.reply(202, {"accepted": True})

    def work(self, event_id, payload):
        time.sleep(0.2)
        with self.lock:
            self.state[event_id] = "done"


if __name__ == "__main__":
    serve(InMemory)
