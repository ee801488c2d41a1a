"""Flaw: refuses verified deliveries whose event type it does not know, as a strict enum parse does. Klikit would
retry such a delivery for ever. Only `klikit check`'s unknown-type check fails."""

from docs_style import KNOWN_TYPES, KlikitHandler, serve


class RefusingUnknown(KlikitHandler):
    def refuse(self, event_type, payload):
        return None if event_type in KNOWN_TYPES else "unknown event type"


if __name__ == "__main__":
    serve(RefusingUnknown)
