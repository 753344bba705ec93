"""The one error of the spaces package."""

from __future__ import annotations


class SpaceError(ValueError):
    """A search space that cannot be used; the message names the file (if any) and parameter."""
