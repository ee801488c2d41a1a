"""Flaw: verifies the v1 signature (which covers t) but never compares t with its clock, so a delivery captured
once verifies for ever: a replay after the dedup record expires, or under a store that forgot it, is processed again.
Partner API v1 requires refusing a t more than 5 minutes old. Only `klikit check --scheme klikit-v1`'s refusals check
fails, on exactly its two timestamp rows (t 10 minutes old, t 10 minutes ahead)."""

from v1_style import V1Handler, serve


class IgnoresTimestamp(V1Handler):
    def timestamp_ok(self, timestamp):
        return True


if __name__ == "__main__":
    serve(IgnoresTimestamp)
