"""The shared inputs every trial reads (the feature cache), checked before each launch.

A cache deleted or damaged mid-study would fail every remaining trial within seconds and
spend the budget; the orchestrator checks it before it asks Optuna for a trial, and stops
the study with the reason instead (see ``Orchestrator._halt``).
"""

from __future__ import annotations

from pathlib import Path

from aam_search.features.cache import CacheError, FeatureCache


def input_problem(cache_path: Path) -> str | None:
    """Why the feature cache cannot be used any more, or None when it can."""
    try:
        FeatureCache.open(cache_path)  # meta.json, then each data file's size and header (check_files)
    except CacheError as error:
        return f"the feature cache is gone or broken: {error}"
    return None
