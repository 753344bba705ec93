"""Evaluation cost: the attacker suite fitted one member at a time versus all members batched.

One run, the same pooled features (the demo cache's raw features, i.e. what the baseline
evaluates; an adapter changes the values, not the cost), the same seed and settings as a
trial (`EvalConfig()` defaults: linear, mlp, mlp_deep, knn; train-then-score and 5-fold
cross-fit; both protocols; bootstrap intervals):

  one_at_a_time - every member (a protocol's train-then-score fit, or one fold) and every kind
                  trained alone: the reference the batched fit must reproduce;
  batched       - every member of every protocol, fit and kind in one stacked loop.

Prints seconds of each, their ratio, and the largest cMAP difference between them (every
kind, fit and protocol), then the whole evaluation (`evaluate_features`, probes included) as
a trial runs it. Runs on `--device` (default: CUDA when there is one, else the CPU).

`--random TRAIN EVAL` replaces the cache by random features of that many train and
evaluation rows per protocol (one row per video, `--dim` wide, attributes planted in them):
members then have different budgets (the train-then-score one runs longest), which the demo's
small sets, all at the 300-step floor, do not show.

    .venv/bin/python bench/eval_cost.py --workdir work/bench
    .venv/bin/python bench/eval_cost.py --random 1500 500 --dim 64
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from aam_search.trainer.baseline import evaluate_features
from aam_search.trainer.config import EvalConfig
from aam_search.trainer.feature_eval import measure_protocols, protocol_rows
from aam_search.trainer.resampling import Resampler
from aam_search.trainer.suite_fit import ProtocolRows
from common import synthetic_cache


def _largest_difference(fast: list, slow: list) -> float:
    worst = 0.0
    for (a, _), (b, _) in zip(fast, slow):
        for field in ("attackers", "attackers_crossfit"):
            for kind, value in a[field].items():
                worst = max(worst, abs(value - b[field][kind]))
    return worst


def _random_rows(train: int, evaluation: int, dim: int, device: torch.device) -> list[ProtocolRows]:
    """Two protocols of random rows; attribute 0 linear in x0, 1 nonlinear in x1, 2 noise."""
    out = []
    for code in (0, 1):
        g = torch.Generator().manual_seed(code)
        x = torch.randn(train + evaluation, dim, generator=g)
        attrs = torch.stack([(x[:, 0] + 0.5 * torch.randn(len(x), generator=g) > 0).long(),
                             (x[:, 1].abs() > 0.674).long(), (torch.rand(len(x), generator=g) < 0.5).long()], 1)
        out.append(ProtocolRows(x.to(device), attrs, torch.arange(len(x)), train, code))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="work/bench")
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--random", type=int, nargs=2, metavar=("TRAIN", "EVAL"))
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    config = EvalConfig()
    cache = None
    if args.random:
        rows = _random_rows(*args.random, args.dim, device)
        names = ["linear", "ring", "noise"]
        eval_videos = np.arange(args.random[0], sum(args.random))
    else:
        _, cache = synthetic_cache(Path(args.workdir), args.videos, images=args.images)
        names = list(cache.meta["attr_names"])
        _, rows = protocol_rows(cache, None, config.split, config.protocols, device=device)
        eval_videos = cache.video_indices(config.split)
    resampler = Resampler.draw(eval_videos, config.bootstrap_resamples, seed=config.bootstrap_seed)
    settings = dict(kinds=config.attackers, folds=config.crossfit_folds, epochs=config.attacker_epochs,
                    seed=args.seed, knn_k=config.knn_k, resampler=resampler)
    seconds, results = {}, {}
    for mode, batched in (("one_at_a_time", False), ("batched", True)):
        _sync(device)
        started = time.perf_counter()
        results[mode] = measure_protocols(rows, names, batched=batched, **settings)
        _sync(device)
        seconds[mode] = time.perf_counter() - started
    members = sum(1 + record["crossfit_folds"] for record, _ in results["batched"])
    difference = _largest_difference(results["batched"], results["one_at_a_time"])
    whole = float("nan")
    if cache is not None:
        _sync(device)
        started = time.perf_counter()
        evaluate_features(cache, None, config, seed=args.seed, device=device)
        _sync(device)
        whole = time.perf_counter() - started
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {device}, torch {torch.__version__}")
    print(f"features: {', '.join(f'{p.x.shape[0]} rows x {p.x.shape[1]}' for p in rows)}; {members} members x "
          f"{len(config.attackers)} kinds")
    for mode, value in seconds.items():
        print(f"{mode:>14}: {value:.2f} s")
    print(f"largest cMAP difference batched vs one at a time: {difference:.2e}")
    print(f"whole evaluation (probes, attackers, bootstrap; batched): {whole:.2f} s")
    leak = {p: round(r["cmap"], 4) for p, (r, _) in zip(config.protocols, results["batched"])}
    print(f"one_at_a_time_s={seconds['one_at_a_time']:.2f} batched_s={seconds['batched']:.2f} "
          f"batched_speedup={seconds['one_at_a_time'] / seconds['batched']:.2f} max_cmap_diff={difference:.1e} "
          f"eval_s={whole:.2f} members={members} device={device.type} leakage={leak}")


if __name__ == "__main__":
    main()
