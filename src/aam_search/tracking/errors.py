"""Errors of the tracking package; importing this module does not import MLflow."""

from __future__ import annotations

from aam_search.errors import AamSearchError


class TrackingUnavailable(AamSearchError, RuntimeError):
    """The MLflow tracking store cannot be reached or created; the message names its URI."""


class PromotionError(AamSearchError, ValueError):
    """A promotion that cannot be done (no such trial, no trial meets the rule, ...).

    Raised before anything is written to MLflow, so the registry is left as it was.
    """
