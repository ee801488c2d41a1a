"""Flaw: does 11 s of work before it answers a new event, past Klikit's 10 s deadline (Klikit counts the late 200
as a failure and retries). Refusals and duplicates are answered at once. `klikit check`'s deadline check fails."""

import time

from docs_style import KlikitHandler, serve


class Slow(KlikitHandler):
    def before_answer(self):
        time.sleep(11)


if __name__ == "__main__":
    serve(Slow)
