"""Flaw: tests "seen?" and records the id in two steps without a lock, with a database round trip (0.1 s) in
between, so concurrent copies of one event are all processed. Only `klikit check`'s concurrency check fails."""

import time

from docs_style import KlikitHandler, serve


class Racy(KlikitHandler):
    def claim(self, event_id):
        new = event_id not in self.seen
        time.sleep(0.1)
        self.seen.add(event_id)
        return new


if __name__ == "__main__":
    serve(Racy)
