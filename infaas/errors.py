"""The one error base: every error infaas raises on purpose derives from `InfaasError`.

The CLI catches it once and prints the message (and the hint, when there is one) without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InfaasError(Exception):
    """An error whose message tells the user what went wrong; `hint` (optional) what to do about it."""

    hint: str = ""

    def __init__(self, *args: object, hint: str = ""):
        super().__init__(*args)
        if hint:
            self.hint = hint
