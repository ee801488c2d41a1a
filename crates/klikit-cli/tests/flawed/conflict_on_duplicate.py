"""Flaw: answers an event id it has seen with 409 Conflict, which Klikit counts as a failed delivery and retries
for ever. Only `klikit check`'s duplicate check fails (409 to concurrent copies is only advice there)."""

from docs_style import KlikitHandler, serve


class ConflictOnDuplicate(KlikitHandler):
    def answer_duplicate(self):
        self.reply(409, {"error": "duplicate event"})


if __name__ == "__main__":
    serve(ConflictOnDuplicate)
