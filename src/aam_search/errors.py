"""The root of the project's errors: each one says what is wrong with the user's input (a
file, a row, a field, a study, a store) in its message.

Every project error class derives from :class:`AamSearchError` and keeps the built-in base
it had (``ValueError``, ``LookupError``, ...), so callers catching that still work; the CLI
catches the root and prints the message instead of a traceback. The lowest layer, like
``redact``: it imports nothing.
"""

from __future__ import annotations


class AamSearchError(Exception):
    """An error of aam-search whose message is meant for the user."""
