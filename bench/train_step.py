"""Training step cost: the trial's training loop per optimizer step, and its batch draws alone.

Runs ``AAMRecipe.setup()`` then ``train()`` on a feature cache (no head pre-training, no
evaluation) and prints milliseconds per step of the whole loop and of drawing the batches
alone (the loop's own drawer: ``DeviceBatches.epoch``, before it ``TrainingData.batches``). Written so
that the same script measures another checkout: point PYTHONPATH at its ``src`` to get the
"before" figure, alternate the two runs on a loaded machine, read the ratios.

    PYTHONPATH=src:bench .venv/bin/python bench/train_step.py --cache work/bench/cache/<key>
    PYTHONPATH=/path/to/main/src:bench .venv/bin/python bench/train_step.py --cache ...   # before

The last line holds ``key=value`` pairs: ``step_ms``, ``draw_ms``, ``steps``, ``residency``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from aam_search.features.cache import FeatureCache
from aam_search.trainer.config import parse_trial_config
from aam_search.trainer.train import AAMRecipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="a feature cache folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adversarial", action="store_true", help="two phases per step (projector, adapter)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = FeatureCache.open(args.cache)
    loss = {"privacy_objective": "adversarial"} if args.adversarial else {}
    config = parse_trial_config({
        "cache": str(cache.path), "seed": 0, "loss": loss,
        "optim": {"epochs": args.epochs, "min_steps": 0, "batch_size": args.batch_size, "head_pretrain_epochs": 0},
    })
    with tempfile.TemporaryDirectory() as out:
        recipe = AAMRecipe(config, out)
        recipe.setup()
        steps = recipe.budget.total_steps
        started = time.perf_counter()
        recipe.train()
        step_ms = 1000 * (time.perf_counter() - started) / steps
        started = time.perf_counter()
        drawn = 0
        device_batches = getattr(recipe, "batches", None)  # the new loop's drawer; before: TrainingData's
        for epoch in range(args.epochs):
            epoch_batches = (device_batches.epoch(epoch) if device_batches is not None
                             else recipe.data.batches(args.batch_size, seed=0, epoch=epoch))
            for _ in epoch_batches:
                drawn += 1
        draw_ms = 1000 * (time.perf_counter() - started) / drawn
        residency = getattr(device_batches, "residency", "host (per-batch gather)")
        recipe.cleanup()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{args.threads} thread(s); cache {cache.path.name}: {cache.num_videos} videos, "
          f"features {cache.tokens}x{cache.dim}; batch {args.batch_size}, {steps} steps")
    print(f"step_ms={step_ms:.3f} draw_ms={draw_ms:.3f} steps={steps} residency={residency.replace(' ', '_')}")


if __name__ == "__main__":
    main()
