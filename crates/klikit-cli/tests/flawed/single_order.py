"""Flaw: expects exactly one order per event (`payload["orders"][0]`) and refuses the others, but Klikit's
klikit.order.created.v2 may batch several new orders. Only `klikit check`'s fixtures check fails (the
created fixture holds two orders)."""

from docs_style import KlikitHandler, serve


class SingleOrder(KlikitHandler):
    def refuse(self, event_type, payload):
        return None if len(payload.get("orders", [])) == 1 else "expected one order"


if __name__ == "__main__":
    serve(SingleOrder)
