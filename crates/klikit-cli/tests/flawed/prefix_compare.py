"""Flaw: compares only as many digits as the sender sent (`expected.startswith(signature)` in constant time), so
a truncated signature is accepted. Only `klikit check`'s refusals check fails."""

import hmac

from docs_style import KlikitHandler, serve


class PrefixCompare(KlikitHandler):
    def signature_matches(self, expected, signature):
        return hmac.compare_digest(expected[: len(signature)].encode(), signature.encode())


if __name__ == "__main__":
    serve(PrefixCompare)
