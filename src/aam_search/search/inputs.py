"""The shared inputs every trial reads (the feature cache), checked before each launch.

A cache deleted or damaged mid-study would fail every remaining trial within seconds and
spend the budget; the orchestrator checks it before it asks Optuna for a trial, and stops
the study with the reason instead (see ``Orchestrator._halt``).
"""

from __future__ import annotations

from pathlib import Path

from aam_search.features.cache import FEATURES_FILE, LABELS_FILE, CacheError, FeatureCache


def input_problem(cache_path: Path) -> str | None:
    """Why the feature cache cannot be used any more, or None when it can."""
    try:
        FeatureCache.open(cache_path)
    except CacheError as error:
        return f"the feature cache is gone or broken: {error}"
    for name in (FEATURES_FILE, LABELS_FILE):
        path = Path(cache_path) / name
        try:
            with open(path, "rb") as handle:
                handle.read(8)  # the safetensors header length: the file opens and reads
        except OSError as error:
            return f"the feature cache is gone or broken: {path}: cannot read ({error.strerror or error})"
    return None
