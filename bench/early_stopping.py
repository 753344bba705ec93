"""MO-ASHA against full fidelity: hypervolume against compute, same samplers and seeds.

Design (issue 13). For each sampler and seed (>= 5), run two studies of the same trial count
on the synthetic dataset: one full fidelity, one with the same compute budget and ``early_stopping: {kind: mo-asha}``.
Record, after every finished or pruned trial, the cumulative compute (trial seconds) and the
hypervolume of the COMPLETE trials (pruned ones never enter it). Print, per seed, the compute
fraction MO-ASHA needs to reach the full-fidelity study's final hypervolume (inf if never),
then its median and spread over seeds. Last line: key=value pairs incl. ``pruned=<count>``.

Phase 1 (now): ``--simulate`` (the default until the orchestrator can prune) replays the
decision rules of aam_search/search/early_stopping.py on simulated learning curves, with
compute counted in epochs. Phase 2 plugs the orchestrator in ``run_study`` (a real study on
bench/common.py's synthetic cache, compute = trial seconds from result.json).

    python bench/early_stopping.py --smoke
    python bench/early_stopping.py --seeds 5 --trials 60 --epochs 27   # --epochs: longer trials
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from aam_search.search.early_stopping import rung_epochs, should_continue

DIRECTIONS = ["maximize", "minimize"]  # utility, leakage


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
    target, total = full[-1][1], full[-1][0]
    for compute, hv in asha:
        if hv >= target - 1e-12:
            return compute / total
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small run for this CPU")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=27, help="trial epochs; raise for longer trials")
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.trials = 5, 30
    fractions, pruned_total = [], 0
    for seed in range(args.seeds):
        full, _ = run_simulated(seed, args.trials, args.epochs, args.min_epochs, None)
        asha, pruned = run_simulated(seed, args.trials, args.epochs, args.min_epochs, args.reduction_factor)
        fraction = compute_fraction(asha, full)
        fractions.append(fraction)
        pruned_total += pruned
        print(f"seed {seed}: full hv {full[-1][1]:.4f} in {full[-1][0]} epochs; mo-asha hv {asha[-1][1]:.4f} "
              f"in {asha[-1][0]} epochs, pruned {pruned}; compute fraction {fraction:.3f}")
    finite = [f for f in fractions if f != float("inf")]
    median = statistics.median(fractions)
    spread = (min(fractions), max(fractions))
    print(f"mode=simulated seeds={args.seeds} trials={args.trials} epochs={args.epochs} "
          f"compute_fraction_median={median:.3f} compute_fraction_min={spread[0]:.3f} "
          f"compute_fraction_max={spread[1]:.3f} reached={len(finite)}/{len(fractions)} pruned={pruned_total}")


if __name__ == "__main__":
    main()
