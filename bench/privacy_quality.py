"""Privacy quality of the starter study: does `aam-search init`'s config, as written, find
private points on data it was not tuned on?

For two datasets (the project's synthetic one and `synth_alt`: another actor, attributes and
actions) it writes the starter study.yaml exactly as `init` does, pointed at the dataset's
manifest, with only `n_trials`, `max_parallel` (from the flags), the work folder and
`track: false` (no MLflow: the numbers come from result.json) changed, and runs the study
in-process. Per dataset and protocol (static, clip, worst case) it reports the best
above-chance removal (raw - new) / (raw - chance) among completed trials whose validation
utility dropped at most 1%, its leakage cMAP with the bootstrap interval (and the removal
interval that gives, raw held fixed), the trial that reached it (trials = number + 1), and
the test split of the trial `promote` would pick (lowest worst-case leakage within 1% drop).
The last line is ``key=value`` pairs.

    .venv/bin/python bench/privacy_quality.py --workdir work/privacy --videos 120 --trials 8 --max-parallel 2
    .venv/bin/python bench/privacy_quality.py --datasets alt --seed 1 --workdir work/privacy-s1
    .venv/bin/python bench/privacy_quality.py --smoke     # a tiny run, a few minutes on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from aam_search.cli_study import starter_config
from aam_search.data.synth import synthesize
from aam_search.data.synth_alt import synthesize_alt
from aam_search.protocol import ADAPTER_FILE, CONFIG_FILE, RESULT_FILE
from aam_search.search.config import load_study_config
from aam_search.search.orchestrator import Orchestrator, trial_out_dir
from aam_search.search.pareto import completed
from aam_search.search.selection import SelectionError, choose_trial
from aam_search.tracking.errors import PromotionError
from aam_search.tracking.promote import held_out_metrics

MAX_DROP = 0.01  # "within 1% utility drop", the promotion rule's default
PROTOCOLS = ("static", "clip", "worst")
GENERATORS = {"synth": synthesize, "alt": synthesize_alt}


def dataset(workdir: Path, generator: str, videos: int, images: int, seed: int) -> Path:
    manifest = workdir / generator / "data" / "manifest.csv"
    if not manifest.is_file():
        GENERATORS[generator](manifest.parent, videos, seed=seed, images=images)
    return manifest


def starter_study(workdir: Path, generator: str, manifest: Path, n_trials: int, max_parallel: int, seed: int):
    """The study `init` writes for `manifest`, with the flags' trial counts and seed, and no MLflow."""
    name = f"pq-{generator}"
    path = workdir / generator / "study.yaml"
    path.write_text(starter_config(path, name, str(manifest)))
    return load_study_config(path, n_trials=n_trials, max_parallel=max_parallel, seed=seed,
                             workdir=str(workdir / generator / "work"), track=False)


def dataset_names(text: str) -> list[str]:
    """`--datasets synth,alt` (or `alt`): the generators to run, in that order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GENERATORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown dataset(s) {unknown or text!r}; choose from {sorted(GENERATORS)}")
    return names


def interval(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "n/a"


def removal_interval(ci: Any, raw: float, chance: float) -> Any:
    """The removal that the cMAP interval's ends give, raw held fixed (high cMAP -> low removal)."""
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2) or not raw - chance:
        return None
    return [(raw - ci[1]) / (raw - chance), (raw - ci[0]) / (raw - chance)]


def leak_of(result: dict[str, Any], protocol: str) -> tuple[float, float, float, Any]:
    """(cmap, raw cmap, chance, cmap interval) of a protocol, 'worst' = the worst-case leakage."""
    ci = result.get("ci") or {}
    if protocol == "worst":
        return (result["leakage"], result["raw_leakage"], result["leakage_chance"], ci.get("leakage"))
    measured, raw = result["measured"]["privacy"][protocol], result["baseline"]["privacy"][protocol]
    return measured["cmap"], raw["cmap"], raw["chance"], ci.get(f"leakage:{protocol}")


def study_report(generator: str, orchestrator: Orchestrator, seconds: float) -> tuple[list[str], dict[str, Any]]:
    config = orchestrator.config
    trials = orchestrator.study.get_trials(deepcopy=False)
    results = {}
    for trial in completed(trials):
        path = trial_out_dir(config, trial.number) / RESULT_FILE
        if path.is_file():
            results[trial.number] = json.loads(path.read_text())
    eligible = {n: r for n, r in results.items()
                if math.isfinite(r.get("utility_drop", math.nan)) and r["utility_drop"] <= MAX_DROP}
    lines, keys = [], {f"{generator}_trials": len(results)}
    any_result = next(iter(results.values()), None)
    for protocol in PROTOCOLS:
        cells = [generator, protocol]
        if any_result is not None:
            _, raw, chance, _ = leak_of(any_result, protocol)
            cells.append(f"{raw:.3f} / {chance:.3f}")
        else:
            cells.append("n/a")
        if not eligible:
            lines.append("| " + " | ".join(cells + ["none within 1%", "", "", "", ""]) + " |")
            keys[f"{generator}_{protocol}_removed"] = "none"
            continue
        # The best removal; ties go to the earlier trial (the one that reached it first).
        def rank(item: tuple[int, dict[str, Any]]) -> tuple[float, int]:
            return item[1]["leakage_above_chance_removed"].get(protocol, -math.inf), -item[0]

        number, result = max(eligible.items(), key=rank)
        removed = result["leakage_above_chance_removed"][protocol]
        cmap, raw, chance, ci = leak_of(result, protocol)
        span = removal_interval(ci, raw, chance)
        cells += [f"{100 * removed:.0f}% " + (f"[{100 * span[0]:.0f}%, {100 * span[1]:.0f}%]" if span else "n/a"),
                  f"{cmap:.3f} {interval(ci)}", f"{result['utility']:.3f} (drop {100 * result['utility_drop']:.1f}%)",
                  f"{number} ({number + 1} trials)"]
        lines.append("| " + " | ".join(cells) + " |")
        keys[f"{generator}_{protocol}_removed"] = round(removed, 3)
        keys[f"{generator}_{protocol}_trial"] = number
    try:
        chosen, rule = choose_trial(trials, config.objectives, max_utility_drop=MAX_DROP)
        folder = trial_out_dir(config, chosen.number)
        test = held_out_metrics(folder / ADAPTER_FILE, yaml.safe_load((folder / CONFIG_FILE).read_text()))
        promoted = (f"{generator}: promoted trial {chosen.number} ({rule}); test utility "
                    f"{test.get('test_utility', math.nan):.3f} "
                    f"(drop {100 * test.get('test_utility_drop', math.nan):.1f}%), "
                    f"test leakage static {test.get('test_leakage_static', math.nan):.3f} / clip "
                    f"{test.get('test_leakage_clip', math.nan):.3f} "
                    f"(raw worst {test.get('test_raw_leakage', math.nan):.3f}, "
                    f"chance {test.get('test_leakage_chance', math.nan):.3f}), worst-case above-chance removed on test "
                    f"{100 * test.get('test_leakage_reduction_above_chance', math.nan):.0f}%")
        keys[f"{generator}_promoted"] = chosen.number
        keys[f"{generator}_test_removed_worst"] = round(test.get("test_leakage_reduction_above_chance", math.nan), 3)
        keys[f"{generator}_test_utility_drop"] = round(test.get("test_utility_drop", math.nan), 4)
    except (SelectionError, PromotionError) as error:
        promoted = f"{generator}: nothing promoted: {error}"
        keys[f"{generator}_promoted"] = "none"
    keys[f"{generator}_seconds"] = round(seconds)
    return lines + [promoted], keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="work/privacy")
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--trials", type=int, default=24, help="n_trials (the starter's own is 24)")
    parser.add_argument("--max-parallel", type=int, default=1, help="max_parallel (the starter's own is 1)")
    parser.add_argument("--datasets", type=dataset_names, default=["synth", "alt"],
                        help="comma-separated, e.g. alt or synth,alt (default: both)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the study sampler's seed and the generators' (a seed other than 0 needs its own --workdir)")
    parser.add_argument("--smoke", action="store_true", help="50 videos, 2 trials: a check that it runs")
    args = parser.parse_args()
    if args.smoke:  # 50 videos: 10 val videos, the fewest the bootstrap gives an interval for
        args.videos, args.trials = 50, 2
        args.workdir = args.workdir if args.workdir != "work/privacy" else "work/privacy-smoke"
    workdir = Path(args.workdir).resolve()
    table = ["| dataset | protocol | raw cMAP / chance (val) | best removed within 1% [CI] | its cMAP [CI] "
             "| its utility (drop) | trial |", "| --- | --- | --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    keys: dict[str, Any] = {"videos": args.videos, "trials": args.trials, "max_parallel": args.max_parallel,
                            "seed": args.seed}
    for generator in args.datasets:
        started = time.perf_counter()
        manifest = dataset(workdir, generator, args.videos, args.videos // 6, args.seed)
        orchestrator = Orchestrator(starter_study(workdir, generator, manifest, args.trials, args.max_parallel,
                                                  args.seed))
        orchestrator.prepare()
        outcome = orchestrator.run()
        lines, found = study_report(generator, orchestrator, time.perf_counter() - started)
        table += lines[:-1]
        notes.append(lines[-1] + f"; {outcome.completed} completed, {outcome.failed} failed")
        keys.update(found)
        print(f"{generator}: done in {time.perf_counter() - started:.0f}s", flush=True)
    print("\n".join(table))
    print("\n".join(notes))
    print(" ".join(f"{k}={v}" for k, v in keys.items()))


if __name__ == "__main__":
    main()
