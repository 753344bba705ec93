"""Calibration: what the AAM does to utility and leakage on the synthetic dataset.

Trains one trial per weight setting on the same feature cache (raw = the identity adapter,
the paper's defaults, and w_LC in {0, 1, 10, 1000}) and prints a markdown table of val
utility, leakage under both protocols, and chance levels, ready for BENCHMARKS.md.

    .venv/bin/python bench/calibration.py --workdir work/bench --videos 240
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aam_search.trainer.baseline import raw_baseline
from aam_search.trainer.config import parse_trial_config
from aam_search.trainer.train import run_trial
from common import synthetic_cache

# (label, loss overrides, optim overrides)
SETTINGS = [
    ("paper defaults (w_LC=100, w_T=1, w_B=1; lr 1e-4 x batch/512)", {},
     {"epochs": 100, "min_steps": 0, "base_lr": 1e-4, "base_batch": 512, "lr_scaling": "linear"}),
    ("paper weights, lr 1e-3", {}, {"lr": 1e-3, "epochs": 50}),
    ("w_LC=1000", {"w_lc": 1000.0}, {"lr": 1e-3, "epochs": 50}),
    ("w_LC=10", {"w_lc": 10.0}, {"lr": 1e-3, "epochs": 50}),
    ("w_LC=1", {"w_lc": 1.0}, {"lr": 1e-3, "epochs": 50}),
    ("w_LC=0", {"w_lc": 0.0}, {"lr": 1e-3, "epochs": 50}),
    ("w_LC=1, w_B=10", {"w_lc": 1.0, "w_privacy": 10.0}, {"lr": 1e-3, "epochs": 50}),
    ("w_LC=1, adversarial", {"w_lc": 1.0, "privacy_objective": "adversarial"}, {"lr": 1e-3, "epochs": 50}),
]


def row(label: str, utility: float, privacy: dict, seconds: float | None) -> str:
    static, clip = privacy.get("static", {}), privacy.get("clip", {})
    cells = [label, f"{utility:.3f}", f"{static.get('cmap', float('nan')):.3f}",
             f"{clip.get('cmap', float('nan')):.3f}", "-" if seconds is None else f"{seconds:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="work/bench")
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    _, cache = synthetic_cache(workdir, args.videos, images=args.videos // 6)

    base = parse_trial_config({"cache": str(cache.path), "seed": args.seed})
    baseline = raw_baseline(cache, base.eval, seed=args.seed)
    lines = ["| setting | action top-1 | leakage cMAP static | leakage cMAP clip | seconds |",
             "| --- | --- | --- | --- | --- |"]
    lines.append(row("raw features (identity adapter)", baseline["tasks"]["action"]["top1"], baseline["privacy"], None))
    for label, loss, optim in SETTINGS:
        config = parse_trial_config({"cache": str(cache.path), "seed": args.seed, "loss": loss, "optim": optim,
                                     "save_adapter": False})
        started = time.perf_counter()
        result = run_trial(config, workdir / "calibration" / label.split(" (")[0].replace(" ", "_").replace(",", ""))
        if result["status"] != "completed":
            lines.append(f"| {label} | {result['status']}: {result['reason']} | | | |")
            continue
        measured = result["measured"]
        lines.append(row(label, result["utility"], measured["privacy"], time.perf_counter() - started))
    privacy = baseline["privacy"]
    lines.append(row("chance", baseline["tasks"]["action"]["chance"],
                     {p: {"cmap": v["chance"]} for p, v in privacy.items()}, None))
    print("\n".join(lines))
    print(json.dumps({p: v["per_attribute"] for p, v in privacy.items()}, indent=1))


if __name__ == "__main__":
    main()
