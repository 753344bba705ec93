"""Which privacy objectives need ``attr:`` labels, and the check that a cache's train split has them.

The paper's NT-Xent objective (``selfsup`` and ``adversarial``) needs no labels. The HSIC
penalty and the linear eraser learn from the train split's ``attr:`` labels: without them
they would silently do nothing, so a study or trial that asks for them on such a cache
fails before its first step, naming the objective.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from aam_search.features.cache import FeatureCache
from aam_search.features.config import ConfigError
from aam_search.trainer.config import TrialConfig

# config path -> what it turns on (said in the error message)
LABEL_OBJECTIVES: dict[str, str] = {
    "loss.w_hsic": "the HSIC penalty (loss.w_hsic > 0)",
    "loss.eraser": "the linear eraser (loss.eraser: true)",
}


def activates(path: str, value: Any) -> bool:
    """Whether setting ``path`` to ``value`` turns on an objective that needs labels."""
    if path == "loss.w_hsic":
        try:
            return float(value) > 0
        except (TypeError, ValueError):
            return False
    if path == "loss.eraser":
        return value is True
    return False


def objectives_needing_labels(config: TrialConfig) -> list[str]:
    """The config paths of the label-needing objectives this trial config turns on."""
    return [path for path in LABEL_OBJECTIVES if activates(path, getattr(config.loss, path.split(".", 1)[1]))]


def check_attr_labels(paths: Iterable[str], cache: FeatureCache, source: str = "trial config") -> None:
    """Raise :class:`ConfigError` naming each objective whose ``attr:`` labels the train split lacks."""
    paths = [path for path in LABEL_OBJECTIVES if path in set(paths)]
    if not paths:
        return
    names = list(cache.meta.get("attr_names") or [])
    labelled = cache.video_indices("train", with_attrs=True) if names else np.zeros(0, dtype=np.int64)
    videos = labelled[~cache.labels("is_image").numpy().astype(bool)[labelled]]
    missing = []
    for path in paths:
        # HSIC trains on batches of train videos; the eraser also fits on labelled images.
        rows = videos if path == "loss.w_hsic" else labelled
        if len(rows) == 0:
            missing.append(LABEL_OBJECTIVES[path])
    if not missing:
        return
    if not names:
        why = "the cache has no attr: columns at all"
    elif len(labelled) == 0:
        why = f"no train row is labelled for any of its attr: columns ({', '.join(names)})"
    else:
        why = f"only train images carry attr: labels ({', '.join(names)}), no train video does"
    raise ConfigError(
        f"{source}: {' and '.join(missing)} {'needs' if len(missing) == 1 else 'need'} attr: labels in the "
        f"train split, but {why} (feature cache {cache.path}); label the train split or turn "
        f"{'it' if len(missing) == 1 else 'them'} off (the NT-Xent objective needs no labels)"
    )


__all__ = ["LABEL_OBJECTIVES", "activates", "check_attr_labels", "objectives_needing_labels"]
