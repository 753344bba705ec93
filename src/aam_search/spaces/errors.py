"""The one error of the spaces package."""

from __future__ import annotations

from aam_search.errors import AamSearchError


class SpaceError(AamSearchError, ValueError):
    """A search space that cannot be used; the message names the file (if any) and parameter."""
