"""The CLI's one kind of expected failure: a message for a person and an exit status."""

from __future__ import annotations


class CliError(Exception):
    """Printed as one line (``tidemark: <message>``) on stderr; the process exits ``code``.

    The message must never carry a credential, a token or a rejected value the user typed
    that could be one (a database URL with its password, a secret reference's target).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
