"""The one exception type users see.

Anything caused by bad input (a missing corpus, an unknown config key, a corrupt checkpoint)
raises LyreError with a one-line message that says what went wrong and what to do. The CLI
prints that line and exits with code 2; Python callers can catch it as a ValueError.
"""


class LyreError(ValueError):
    """A user-facing error: one line, no traceback needed to understand it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message: LyreError messages are one line, library
    exceptions (torch, safetensors) are sometimes many."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
