"""The held-out check of a chosen adapter: fresh attackers and probes on the test split.

Promotion (``tracking/promote.py``) calls it once for the trial it picked, so the test split
stays unseen by the search; the numbers come back shaped like a trial's ``result.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aam_search.errors import AamSearchError


class HeldOutError(AamSearchError, ValueError):
    """The chosen adapter cannot be evaluated on the test split; the message says why."""


def evaluate_on_test(adapter_path: Path, trial_config: dict[str, Any], cache_path: str | Path | None = None
                     ) -> dict[str, Any]:
    """The adapter's summary against raw features on the test split (``summarize``'s fields
    and ``measured``), with fresh attackers and probes."""
    import torch

    from aam_search.features.cache import CacheError, FeatureCache
    from aam_search.trainer.baseline import evaluate_features, raw_baseline, summarize
    from aam_search.trainer.checkpoint import load_checkpoint
    from aam_search.trainer.config import parse_trial_config

    if cache_path is not None:
        trial_config = {**trial_config, "cache": str(cache_path)}
    config = parse_trial_config(trial_config, "the trial's trial.yaml")
    try:
        cache = FeatureCache.open(config.cache)
        cache.verify()  # a champion is never picked on features changed since extraction
    except (CacheError, OSError) as error:
        raise HeldOutError(f"cannot open the trial's feature cache ({error}); pass --cache DIR") from None
    checkpoint = load_checkpoint(adapter_path)
    key = checkpoint.info.get("cache_key")
    if key and cache.meta.get("key") and key != cache.meta["key"]:
        raise HeldOutError(f"the adapter was trained on feature cache {key}, but {cache.path} is "
                           f"{cache.meta['key']}")
    adapter = checkpoint.adapter.eval()
    split = config.eval.model_copy(update={"split": "test"})

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return adapter(tokens)

    try:
        measured = evaluate_features(cache, transform, split, seed=config.seed)
        raw = raw_baseline(cache, split, seed=config.seed)
    except ValueError as error:  # e.g. nothing labelled in the test split
        raise HeldOutError(f"cannot evaluate on the test split: {error}") from None
    return {**summarize(measured, raw, split.primary_protocol), "measured": measured}
