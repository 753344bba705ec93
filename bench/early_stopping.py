"""MO-ASHA against full fidelity: hypervolume against compute, same samplers and seeds.

For each sampler and seed (>= 5), two real studies (the orchestrator, trial subprocesses) on
the synthetic dataset: one at full fidelity with ``--trials`` trials, one with
``early_stopping: {kind: mo-asha}`` and ``--asha-trials`` trials (default twice as many: what
MO-ASHA saves it spends on more trials); both samplers draw the same random start-up
trials (``startup_trials``, the full study's default). After every finished or pruned trial,
in the order they ended, the cumulative compute (the trials' own seconds, ``timings.total_s`` of
result.json: rung evaluations and the waits for verdicts included, process start-up not) and
the hypervolume of the COMPLETE trials (pruned ones never enter it), at the study's
reference point; and the same in trained epochs (``epochs_done``), which the machine's load
does not move. Prints, per seed, the compute fraction MO-ASHA needs to reach the
full-fidelity study's final hypervolume (inf if never), then its median and spread over seeds.
Last line: key=value pairs, ``pruned=<count>`` among them. Each run writes to its own fresh
folder under /tmp unless ``--workdir`` is given.

    python bench/early_stopping.py --smoke
    python bench/early_stopping.py --seeds 5 --trials 8 --epochs 9        # --epochs: longer trials
    python bench/early_stopping.py --simulate                             # the rules on simulated curves

``--simulate`` replays the decision rules of aam_search/search/early_stopping.py on simulated
learning curves (compute counted in epochs), without training anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from aam_search.protocol import RESULT_FILE
from aam_search.search.config import default_startup_trials, parse_study_config
from aam_search.search.early_stopping import rung_epochs, should_continue
from aam_search.search.orchestrator import Orchestrator
from aam_search.search.pareto import hypervolume
from common import synthetic_cache

DIRECTIONS = ["maximize", "minimize"]  # utility, leakage
OBJECTIVES = ["utility", "leakage"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
def hypervolume_2d(points: list[tuple[float, float]], reference: tuple[float, float] = (0.0, 1.0)) -> float:
    """Area dominated by (utility up, leakage down) points above ``reference``."""
    front = sorted({p for p in points if p[0] > reference[0] and p[1] < reference[1]}, key=lambda p: -p[0])
    area, best_leak = 0.0, reference[1]
    for utility, leakage in front:
        if leakage < best_leak:
            area += (utility - reference[0]) * (best_leak - leakage)
            best_leak = leakage
    return area


def simulated_curve(rng: np.random.Generator, epochs: int) -> np.ndarray:
    """(epochs, 2) utility/leakage after each epoch: saturating towards a random final point,
    with noise, so early ranks predict final ranks imperfectly."""
    final_u, final_l = rng.uniform(0.3, 0.9), rng.uniform(0.1, 0.9)
    rate = rng.uniform(0.1, 0.6)
    t = np.arange(1, epochs + 1)
    progress = 1 - np.exp(-rate * t)
    noise = rng.normal(0, 0.02, size=(epochs, 2))
    return np.stack([final_u * progress, 1 - (1 - final_l) * progress], axis=1) + noise


def run_simulated(seed: int, trials: int, epochs: int, min_epochs: int, eta: int | None) -> tuple[list, int]:
    """(compute, hypervolume) after each trial, and the pruned count; eta None: full fidelity.
    Both arms get the same compute (``trials * epochs``): MO-ASHA spends what it saves on
    more trials, which is the point of stopping early."""
    rng = np.random.default_rng(seed)  # same seed: both arms see the same trials in the same order
    rungs = rung_epochs(min_epochs, eta, epochs) if eta else []
    recorded: dict[int, list[list[float]]] = {r: [] for r in rungs}
    finals, history, compute, pruned = [], [], 0, 0
    budget = trials * epochs
    while compute < budget:
        curve = simulated_curve(rng, epochs)
        stopped_at = None
        for rung in rungs:
            vector = curve[rung - 1].tolist()
            go_on = should_continue(recorded[rung], vector, DIRECTIONS, eta)
            recorded[rung].append(vector)
            if not go_on:
                stopped_at = rung
                break
        compute += stopped_at or epochs
        if stopped_at:
            pruned += 1
        else:
            finals.append(tuple(curve[-1]))
        history.append((compute, hypervolume_2d(finals)))
    return history, pruned


def compute_fraction(asha: list, full: list) -> float:
    """Compute MO-ASHA spent when its hypervolume first reached full fidelity's final one,
    over full fidelity's total compute."""
    target, total = full[-1][1], full[-1][0]
    for compute, hv in asha:
        if hv >= target - 1e-12:
            return compute / total
    return float("inf")


def trial_config(epochs: int, batch_size: int) -> dict:
    """The bench's trials: the whole attacker suite at the end, without cross-fitting and
    bootstrap intervals (they do not move the objective values, and would dwarf training on
    the synthetic cache)."""
    return {"optim": {"epochs": epochs, "min_steps": 0, "batch_size": batch_size, "head_pretrain_epochs": 10},
            "eval": {"attacker_epochs": 20, "probe_epochs": 20, "crossfit_folds": 0, "bootstrap_resamples": 0},
            "save_adapter": False}


def run_study(name: str, workdir: Path, cache_path: Path, sampler: str, seed: int, trials: int, trial: dict,
              stopping: dict | None, space: str, startup: int) -> tuple[list, int, list, list[tuple[float, float]]]:
    """(cumulative compute seconds, hypervolume) after each ended trial, the pruned count, the
    same history in trained epochs (a measure the machine's load does not move), and the
    (utility, leakage) of every COMPLETE trial."""
    data = {"name": name, "workdir": str(workdir), "data": {"cache": str(cache_path)}, "trial": trial,
            "sampler": sampler, "seed": seed, "n_trials": trials, "max_parallel": 1, "track": False,
            "space": space, "startup_trials": startup}
    if stopping is not None:
        data["early_stopping"] = stopping
    orchestrator = Orchestrator(parse_study_config(data, f"bench study {name}"))
    orchestrator.prepare()
    if orchestrator.run().interrupted:
        raise KeyboardInterrupt(f"study {name} was interrupted")
    ended = sorted((t for t in orchestrator.study.get_trials(deepcopy=False) if t.state in FINISHED
                    and t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    history, by_epochs, compute, epochs = [], [], 0.0, 0
    for index, trial_record in enumerate(ended):
        path = Path(trial_record.user_attrs.get("out_dir", "")) / RESULT_FILE
        result = json.loads(path.read_text()) if path.is_file() else {}
        compute += float((result.get("timings") or {}).get("total_s") or 0.0)
        epochs += int(result.get("epochs_done") or 0)
        volume = hypervolume(ended[: index + 1], OBJECTIVES, orchestrator.reference)
        history.append((compute, volume))
        by_epochs.append((epochs, volume))
    finals = [tuple(t.values) for t in ended if t.state == TrialState.COMPLETE]
    return history, sum(t.state == TrialState.PRUNED for t in ended), by_epochs, finals


def spread(finals: list[tuple[float, float]], val_videos: int) -> tuple[float, float, float]:
    """The full study's utility range and leakage range across its trials, and one binomial
    standard error of a top-1 accuracy near their mean utility on ``val_videos`` videos: a
    utility range within a few standard errors means the trials differ in utility by noise
    alone, so which of them makes the front, and so the final hypervolume, is decided by a
    video or two."""
    utilities, leakages = zip(*finals)
    p = statistics.fmean(utilities)
    return (max(utilities) - min(utilities), max(leakages) - min(leakages),
            (p * (1 - p) / max(1, val_videos)) ** 0.5)


def main_studies(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="aam-bench-early-stopping-")).resolve()
    started = time.perf_counter()
    _, cache = synthetic_cache(workdir, args.videos, images=args.videos // 6)
    trial = trial_config(args.epochs, args.batch_size)
    stopping = {"kind": "mo-asha", "min_epochs": args.min_epochs, "reduction_factor": args.reduction_factor}
    asha_trials = args.asha_trials or 2 * args.trials
    # The same sampler in both arms: the random start-up the full study's size gives it (by
    # default it would grow with the MO-ASHA arm's larger trial count).
    startup = default_startup_trials(args.trials)
    fractions, epoch_fractions, pruned_total, full_hv, asha_hv = [], [], 0, [], []
    utility_ranges, standard_errors = [], []
    val_videos = len(cache.video_indices("val", with_action=True))  # what top-1 is measured on: no images
    for sampler in args.samplers:
        for seed in args.seeds:
            full, _, full_epochs, full_finals = run_study(f"full-{sampler}-{seed}", workdir / "studies", cache.path, sampler, seed,
                                args.trials, trial, None, args.space, startup)
            asha, pruned, asha_epochs, _ = run_study(f"asha-{sampler}-{seed}", workdir / "studies", cache.path, sampler, seed,
                                     asha_trials, trial, stopping, args.space, startup)
            fraction = compute_fraction(asha, full)
            fractions.append(fraction)
            epoch_fractions.append(compute_fraction(asha_epochs, full_epochs))
            pruned_total += pruned
            utility_range, leakage_range, standard_error = spread(full_finals, val_videos)
            utility_ranges.append(utility_range)
            standard_errors.append(standard_error)
            full_hv.append(full[-1][1])
            asha_hv.append(asha[-1][1])
            print(f"{sampler} seed {seed}: full hv {full[-1][1]:.4f} in {full[-1][0]:.0f}s ({args.trials} trials); "
                  f"mo-asha hv {asha[-1][1]:.4f} in {asha[-1][0]:.0f}s ({asha_trials} trials, {pruned} pruned); "
                  f"compute fraction {fraction:.3f} (in trained epochs {epoch_fractions[-1]:.3f}); "
                  f"full utility range {utility_range:.3f} (binomial s.e. {standard_error:.3f} on {val_videos} val "
                  f"videos), leakage range {leakage_range:.3f}", flush=True)
    finite = [f for f in fractions if f != float("inf")]
    print(f"mode=study samplers={','.join(args.samplers)} seeds={len(args.seeds)} trials={args.trials} "
          f"asha_trials={asha_trials} startup_trials={startup} space={args.space} epochs={args.epochs} min_epochs={args.min_epochs} "
          f"reduction_factor={args.reduction_factor} videos={args.videos} "
          f"compute_fraction_median={statistics.median(fractions):.3f} compute_fraction_min={min(fractions):.3f} "
          f"compute_fraction_max={max(fractions):.3f} reached={len(finite)}/{len(fractions)} "
          f"compute_fraction_epochs_median={statistics.median(epoch_fractions):.3f} "
          f"full_hv_median={statistics.median(full_hv):.4f} asha_hv_median={statistics.median(asha_hv):.4f} "
          f"utility_range_median={statistics.median(utility_ranges):.3f} "
          f"utility_se={statistics.median(standard_errors):.3f} "
          f"pruned={pruned_total} seconds={time.perf_counter() - started:.0f} workdir={workdir}")


def main_simulated(args: argparse.Namespace) -> None:
    fractions, pruned_total = [], 0
    for seed in args.seeds:
        full, _ = run_simulated(seed, args.trials, args.epochs, args.min_epochs, None)
        asha, pruned = run_simulated(seed, args.trials, args.epochs, args.min_epochs, args.reduction_factor)
        fractions.append(compute_fraction(asha, full))
        pruned_total += pruned
        print(f"seed {seed}: full hv {full[-1][1]:.4f} in {full[-1][0]} epochs; mo-asha hv {asha[-1][1]:.4f} "
              f"in {asha[-1][0]} epochs, pruned {pruned}; compute fraction {fractions[-1]:.3f}")
    finite = [f for f in fractions if f != float("inf")]
    print(f"mode=simulated seeds={len(args.seeds)} trials={args.trials} epochs={args.epochs} "
          f"compute_fraction_median={statistics.median(fractions):.3f} compute_fraction_min={min(fractions):.3f} "
          f"compute_fraction_max={max(fractions):.3f} reached={len(finite)}/{len(fractions)} pruned={pruned_total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small run for this CPU (a few minutes)")
    parser.add_argument("--simulate", action="store_true", help="replay the rules on simulated curves")
    parser.add_argument("--workdir", default=None, help="default: a fresh folder under /tmp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--samplers", nargs="+", default=["tpe"])
    parser.add_argument("--trials", type=int, default=8, help="full-fidelity trials per study")
    parser.add_argument("--space", default="privacy",
                        help="search space preset; default the one `aam-search init` writes, whose trials "
                             "differ more than loss-weights' do on the synthetic data")
    parser.add_argument("--asha-trials", type=int, default=None, help="MO-ASHA trials per study; default 2x")
    parser.add_argument("--epochs", type=int, default=9, help="trial epochs; raise for longer trials")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--videos", type=int, default=120)
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    if args.simulate:
        if args.smoke:
            args.trials = 30
        main_simulated(args)
        return
    if args.smoke:
        args.seeds, args.trials, args.epochs, args.videos = args.seeds[:2], 2, 4, 60
        args.min_epochs, args.reduction_factor = 1, 2
    torch.set_num_threads(1)  # the orchestrator's raw baseline; trials are their own processes
    main_studies(args)


if __name__ == "__main__":
    main()
