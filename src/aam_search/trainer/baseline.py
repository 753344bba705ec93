"""The raw-feature baseline (identity adapter), computed once per cache and stored with it.

Every trial reports leakage reduction and utility drop relative to this baseline. It is
keyed by the evaluation settings, so trials evaluated alike share one computation; the file
is written atomically, so two trials racing to create it both leave a valid file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aam_search.features.cache import FeatureCache, write_json_atomic
from aam_search.trainer.config import EvalConfig
from aam_search.trainer.data import task_names
from aam_search.trainer.feature_eval import Transform, evaluate_privacy, evaluate_utility

# Bump when the evaluation itself changes (probe or attacker training), so that caches keep
# no baseline measured by older code.
EVALUATION_VERSION = 2


def evaluate_features(
    cache: FeatureCache, transform: Transform | None, config: EvalConfig, *, seed: int
) -> dict[str, Any]:
    """Utility of every task and leakage of every protocol, for one feature transform."""
    tasks = {
        task: evaluate_utility(cache, transform, config.split, task=task, seed=seed, epochs=config.probe_epochs)
        for task in task_names(cache)
    }
    privacy = evaluate_privacy(
        cache, transform, config.split, protocols=config.protocols, seed=seed, epochs=config.attacker_epochs
    )
    return {"tasks": tasks, "privacy": privacy}


def raw_baseline(cache: FeatureCache, config: EvalConfig, *, seed: int) -> dict[str, Any]:
    settings = {**config.model_dump(mode="json"), "seed": seed, "evaluation_version": EVALUATION_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache.path / "baselines" / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # a damaged file is recomputed and replaced
    baseline = {"settings": settings, **evaluate_features(cache, None, config, seed=seed)}
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, baseline)
    return baseline


def summarize(measured: dict[str, Any], baseline: dict[str, Any], primary_protocol: str) -> dict[str, Any]:
    """Headline numbers: utility, leakage, and their change against the raw baseline."""
    main_task = next(iter(measured["tasks"]), None)
    utility = measured["tasks"][main_task]["top1"] if main_task else float("nan")
    raw_utility = baseline["tasks"][main_task]["top1"] if main_task else float("nan")
    leak = measured["privacy"].get(primary_protocol)
    raw_leak = baseline["privacy"].get(primary_protocol)
    leakage = leak["cmap"] if leak else float("nan")
    raw_leakage = raw_leak["cmap"] if raw_leak else float("nan")
    chance = raw_leak["chance"] if raw_leak else float("nan")
    above_chance = raw_leakage - chance
    return {
        "utility": utility,
        "leakage": leakage,
        "leakage_chance": chance,
        "raw_utility": raw_utility,
        "raw_leakage": raw_leakage,
        "leakage_reduction": (raw_leakage - leakage) / raw_leakage if raw_leakage else float("nan"),
        "leakage_reduction_above_chance": (raw_leakage - leakage) / above_chance if above_chance > 0 else float("nan"),
        "utility_drop": (raw_utility - utility) / raw_utility if raw_utility else float("nan"),
        # The paper's combined score, y = (acc + (1 - priv)) / 2.
        "combined_score": (utility + (1 - leakage)) / 2,
    }
