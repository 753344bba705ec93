"""The demo on embedded defaults: a synthetic dataset and a CPU study over the loss weights.

Everything lands under one work folder. Rerunning resumes: the dataset, the feature cache
and completed trials are reused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aam_search.data.synth import UNSEEN_TASKS, synthesize
from aam_search.search.config import DataConfig, StudyConfig
from aam_search.search.live import StudyView, front_table
from aam_search.search.orchestrator import Orchestrator, StudyOutcome

# Trials short enough for a 2-core CPU: the paper's lr (1e-4 at batch 512) scaled to batch
# 64 barely moves the adapter in 50 epochs of a small dataset, so the demo fixes lr 1e-3.
DEMO_TRIAL: dict[str, Any] = {
    "optim": {"epochs": 50, "batch_size": 64, "lr": 1e-3},
    "eval": {"primary_protocol": "static", "unseen_tasks": list(UNSEEN_TASKS)},  # task:speed: probed only
}


DEMO_MAX_UTILITY_DROP = 0.05  # the promotion rule: a small demo's validation set is noisy


def demo_config(workdir: Path, manifest: Path, n_trials: int) -> StudyConfig:
    return StudyConfig(
        name="demo",
        workdir=workdir,
        data=DataConfig(manifest=manifest),
        space="loss-weights",
        trial=DEMO_TRIAL,
        n_trials=n_trials,
        max_parallel=2,
        trial_timeout_s=600,
    )


def baseline_table(baseline: dict[str, float], chance: dict[str, float]) -> Table:
    table = Table("raw features (identity adapter)", "value", "chance", title="what raw features leak (val)")
    table.add_row("action top-1 (linear probe)", f"{baseline['utility']:.3f}", f"{chance['utility']:.3f}")
    for protocol in ("static", "clip"):
        key = f"leakage:{protocol}"
        if key in baseline:
            table.add_row(f"privacy cMAP, {protocol} protocol", f"{baseline[key]:.3f}", f"{chance[key]:.3f}")
    return table


def run_demo(workdir: Path, *, videos: int = 240, n_trials: int = 12, console: Console | None = None) -> StudyOutcome:
    from aam_search.tracking.runs import study_tracker

    console = console or Console()
    workdir = workdir.resolve()
    manifest = workdir / "data" / "manifest.csv"
    if not manifest.is_file():
        console.rule("1. synthetic dataset")
        started = time.perf_counter()
        report = synthesize(workdir / "data", videos, seed=0, images=videos // 6)
        console.print(f"wrote {report.manifest} in {time.perf_counter() - started:.1f}s: "
                      f"{report.videos_per_split} videos, {report.images_per_split} images")
    console.rule("2. features, raw baseline and the study")
    config = demo_config(workdir, manifest, n_trials)
    view = StudyView(console)
    tracker = study_tracker(config)  # before prepare: an unreachable MLflow fails in seconds
    orchestrator = Orchestrator(config, callbacks=[view] if tracker is None else [view, tracker],
                                progress=view.interactive)
    with view:
        orchestrator.prepare()
        outcome = orchestrator.run()
    console.rule("3. results")
    console.print(baseline_table(orchestrator.baseline, orchestrator.chance))
    trials = orchestrator.study.get_trials(deepcopy=False)
    console.print(front_table(trials, orchestrator.config.objectives, title="Pareto front (val): utility vs leakage"))
    console.print(f"{outcome.completed} trials completed, {outcome.failed} failed, "
                  f"hypervolume {outcome.hypervolume:.4f}; trials in {workdir / 'trials'}")
    console.print(f"inspect: aam-search front demo --storage sqlite:///{workdir / 'optuna.db'} --format csv",
                  soft_wrap=True)
    if outcome.completed and not outcome.interrupted:
        console.rule("4. promotion to the MLflow Model Registry")
        _promote(workdir, console)
    return outcome


def _promote(workdir: Path, console: Console) -> None:
    """Promote the least-leaking trial within 5% utility of raw (else the front's knee)."""
    from aam_search.tracking.errors import PromotionError
    from aam_search.tracking.promote import promote

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    say = lambda message: console.print(message, soft_wrap=True, highlight=False, markup=False)  # noqa: E731
    try:
        promotion = promote("demo", storage=storage, max_utility_drop=DEMO_MAX_UTILITY_DROP, say=say)
    except PromotionError as error:
        say(f"{error}; promoting the front's knee instead")
        try:
            promotion = promote("demo", storage=storage, knee=True, say=say)
        except PromotionError as error:
            say(f"nothing promoted: {error}")
            return
    metrics = promotion.test_metrics
    console.print(f"promoted trial {promotion.trial} as [bold]{promotion.model_name} version {promotion.version}[/] "
                  f"({promotion.model_uri}); test split: utility {metrics.get('test_utility', float('nan')):.3f}, "
                  f"leakage {metrics.get('test_leakage', float('nan')):.3f}", soft_wrap=True)
    console.print(f"browse the study in MLflow: aam-search ui --workdir {workdir}", soft_wrap=True, highlight=False)
