"""Search efficiency: hypervolume after K trials, per sampler and seed, in one run.

Samplers tpe, nsga2, gp and random search the `loss-weights` space; the paper's grid
(`paper` space: w_LC x layers) is walked by GridSampler in a seeded order. Every trial is a
real AAM training on the same synthetic feature cache (run in-process to keep the
benchmark about the samplers, not process start-up). Hypervolume uses the study's
reference point, derived from the raw baseline (half the raw utility, the raw leakage).

    .venv/bin/python bench/search_efficiency.py --workdir work/bench --trials 10 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import optuna

from aam_search.search.config import DataConfig, StudyConfig
from aam_search.search.objectives import objective_value
from aam_search.search.pareto import hypervolume, reference_point
from aam_search.search.study import make_sampler
from aam_search.spaces import merge_overrides, resolve_space
from aam_search.trainer.baseline import raw_baseline
from aam_search.trainer.config import parse_trial_config
from aam_search.trainer.train import run_trial
from common import synthetic_cache

TRIAL = {"optim": {"epochs": 50, "batch_size": 64, "lr": 1e-3}, "save_adapter": False}
OBJECTIVES = ["utility", "leakage"]


def run_study(sampler: str, space_name: str, seed: int, trials: int, cache_path: Path, out: Path,
              reference: np.ndarray) -> list[float]:
    space = resolve_space(space_name)
    config = StudyConfig(name=f"{sampler}-{seed}", workdir=out, data=DataConfig(cache=cache_path),
                         space=space_name, sampler=sampler, seed=seed, n_trials=trials)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(config, space.grid()))
    history: list[float] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        params = space.suggest(trial)
        merged = merge_overrides({**TRIAL, "cache": str(cache_path), "seed": seed}, space.to_overrides(params))
        result = run_trial(parse_trial_config(merged), out / f"{sampler}-{seed}" / f"trial-{trial.number}")
        if result["status"] != "completed":
            raise optuna.TrialPruned(result["reason"])  # counted, no values
        return tuple(objective_value(name, result) for name in OBJECTIVES)

    def record(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        history.append(hypervolume(study.get_trials(deepcopy=False), OBJECTIVES, reference))

    study.optimize(objective, n_trials=trials, callbacks=[record])
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="work/bench")
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "gp", "random", "grid"])
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    workdir = Path(args.workdir).resolve()
    _, cache = synthetic_cache(workdir, args.videos, images=args.videos // 6)
    base = parse_trial_config({**TRIAL, "cache": str(cache.path)})
    baseline = raw_baseline(cache, base.eval, seed=0)
    raw = {"utility": baseline["tasks"]["action"]["top1"], "leakage": baseline["privacy"]["static"]["cmap"]}
    reference = reference_point(OBJECTIVES, raw)
    histories: dict[str, list[list[float]]] = {}
    started = time.perf_counter()
    for sampler in args.samplers:
        space = "paper" if sampler == "grid" else "loss-weights"
        for seed in args.seeds:
            history = run_study(sampler, space, seed, args.trials, cache.path, workdir / "efficiency", reference)
            histories.setdefault(sampler, []).append(history)
            print(f"{sampler:7s} seed {seed}: hypervolume by trial {[round(h, 4) for h in history]}", flush=True)
    checkpoints = sorted({max(1, args.trials // 2), args.trials})
    lines = ["| sampler | space | " + " | ".join(f"HV after {k} (mean ± sd)" for k in checkpoints) + " |",
             "| --- | --- | " + " | ".join("---" for _ in checkpoints) + " |"]
    for sampler, runs in histories.items():
        cells = []
        for k in checkpoints:
            values = [run[k - 1] for run in runs if len(run) >= k]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        space = "paper grid" if sampler == "grid" else "loss-weights"
        lines.append(f"| {sampler} | {space} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(json.dumps({"raw": raw, "reference": reference.tolist(), "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
