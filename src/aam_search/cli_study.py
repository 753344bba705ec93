"""``aam-search start | worker | front | status | init``: the study commands (thin)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

console = Console()

STARTER_CONFIG = """\
# aam-search study: search AAM loss weights and adapter sizes along the privacy-utility front.
# Run it with:  aam-search start --config {path}
name: {name}                      # the Optuna study name (and default work folder work/<name>)
# workdir: work/{name}            # trials, the feature cache, optuna.db and mlflow.db live here
# storage: postgresql://user@host/aam   # several machines: one study in PostgreSQL (default: SQLite)

data:
  manifest: {manifest}            # CSV: path, split, action, attr:*, task:*, group:* (see README)
  # cache: path/to/ready/cache    # or a feature cache extracted earlier (then no manifest)
  encoder:
    name: tiny3d                  # tiny3d | videomae | my_module:factory
    options: {{}}                   # videomae: {{model: MCG-NJU/videomae-base}} or a local path
  clips: {{stride: 2, eval_clips: 5, static_clips: 2}}

space: privacy                    # privacy | loss-weights | adapter-size | paper | full | path/to/space.yaml
#   privacy: NT-Xent, HSIC penalty, linear eraser, their weights, the lr (HSIC and eraser need
#            attr: labels in the train split; the study's start says so if they are missing)
#   loss-weights: w_LC, w_T, w_B, tau and the lr; the NT-Xent privacy loss needs no attr: labels
#   paper: the paper's grid with its optimiser (lr 1e-4 at batch 512, linear scaling, 100 epochs)
objectives: [utility, leakage]    # also leakage:static, leakage:clip, task:<name>, params, combined
# max_utility_drop: 0.01          # constraint: at most 1% relative utility drop against raw features
sampler: tpe                      # tpe | nsga2 | nsga3 | gp | random | grid (with space: paper)
seed: 0
n_trials: 24
enqueue_paper_default: true       # the paper's w_LC=100, w_T=1, w_B=1 runs first

trial:                            # shared by every trial; the space overrides what it searches
  # 20 epochs, or more until 500 optimizer steps (a small train set makes few steps per epoch);
  # lr: searched by the space, else 1e-3 at batch 64, scaled by sqrt(batch_size / 64)
  optim: {{epochs: 20, min_steps: 500, batch_size: 64}}
  eval: {{primary_protocol: static}}
  # every task: column is co-trained; to probe one the adapter never trains for (unseen utility):
  # eval: {{primary_protocol: static, unseen_tasks: [task:speed]}}   # and objectives: [..., task:speed]
  # deepspeed: ds_zero2.json      # ZeRO through Accelerate's DeepSpeed plugin

max_parallel: 1                   # concurrent trials on CPU (GPUs are found automatically)
gpus_per_trial: 1
trial_timeout_s: 3600
max_retries: 1
# tracking_uri: http://127.0.0.1:5000   # MLflow; default sqlite:///<workdir>/mlflow.db
# track: false                   # no MLflow at all
"""


def _orchestrator(config, *, worker: bool = False):
    """The study's orchestrator with its callbacks: the live view, and the MLflow tracker
    (connected now, so an unreachable MLflow fails the start in seconds)."""
    from aam_search.search.live import StudyView
    from aam_search.search.orchestrator import Orchestrator
    from aam_search.tracking.runs import study_tracker

    view = StudyView(console)
    tracker = study_tracker(config)
    callbacks = [view] if tracker is None else [view, tracker]
    return Orchestrator(config, callbacks=callbacks, worker=worker, progress=view.interactive), view


def _run(orchestrator, view) -> int:
    from aam_search.search.live import front_table

    with view:
        orchestrator.prepare()
        outcome = orchestrator.run()
    trials = orchestrator.study.get_trials(deepcopy=False)
    console.print(front_table(trials, orchestrator.config.objectives, title=f"Pareto front of {orchestrator.config.name}"))
    console.print(f"{outcome.completed} completed, {outcome.failed} failed, hypervolume {outcome.hypervolume:.4f}")
    if outcome.stopped:
        console.print(f"[bold red]study stopped:[/] {outcome.stopped}; no trial was spent on it: fix it and "
                      "run the same command again to resume", soft_wrap=True, highlight=False)
        return 1
    if outcome.interrupted:
        console.print("[yellow]stopped; run the same command again to resume[/]")
        return 130
    if not outcome.completed and outcome.failed:
        console.print(f"[bold red]every trial failed ({outcome.failed}):[/] see `aam-search status "
                      f"{orchestrator.config.name}` for the reasons", soft_wrap=True, highlight=False)
        return 1
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from aam_search.search.config import load_study_config

    config = load_study_config(args.config)
    orchestrator, view = _orchestrator(config)
    if args.prepare_only:  # e.g. before a SLURM array of workers: cache, baseline, study
        with view:
            orchestrator.prepare()
        console.print(f"study {config.name!r} is ready; start workers with: aam-search worker "
                      f"--study {config.name} --storage <URL>")
        return 0
    return _run(orchestrator, view)


def cmd_worker(args: argparse.Namespace) -> int:
    from aam_search.search.config import worker_config
    from aam_search.search.record import stored_config
    from aam_search.search.study import load_existing_study

    study = load_existing_study(args.study, args.storage)
    stored = stored_config(study)
    if not stored:
        raise SystemExit(f"study {args.study!r} was not started by aam-search start (no stored config)")
    config = worker_config(stored, study=args.study, storage=args.storage, workdir=args.workdir,
                           tracking_uri=args.tracking_uri, allow_plugins=args.allow_plugin or ())
    return _run(*_orchestrator(config, worker=True))


def cmd_front(args: argparse.Namespace) -> int:
    from aam_search.search.live import front_table
    from aam_search.search.pareto import front_summaries, summarize_trials
    from aam_search.search.record import stored_objectives
    from aam_search.search.shown import trial_rows
    from aam_search.search.study import load_existing_study

    study = load_existing_study(args.study, args.storage)
    objectives = stored_objectives(study)
    if args.format == "table":
        console.print(front_table(study.get_trials(deepcopy=False), objectives, title=f"Pareto front of {args.study}"))
        return 0
    trials = study.get_trials(deepcopy=False)
    summaries = front_summaries(trials, objectives) if not args.all else summarize_trials(trials, objectives)
    rows = trial_rows(summaries, objectives)
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
    else:
        buffer = io.StringIO()
        columns = sorted({key for row in rows for key in row}, key=lambda k: (k.startswith("param:"), k))
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        print(buffer.getvalue(), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from aam_search.search.record import hypervolume_history, stored_config, trial_summary
    from aam_search.search.study import counted, load_existing_study

    study = load_existing_study(args.study, args.storage)
    trials = counted(study.get_trials(deepcopy=False))
    config = stored_config(study)
    table = Table("state", "trials", title=f"study {args.study}")
    for state in TrialState:
        count = sum(t.state == state for t in trials)
        if count:
            table.add_row(state.name, str(count))
    console.print(table)
    history = hypervolume_history(study)
    console.print(f"budget {config.get('n_trials', '?')} trials; hypervolume "
                  f"{history[-1][1] if history else 0.0:.4f} after {history[-1][0] if history else 0} completed")
    for trial in trials:
        if trial.state == TrialState.FAIL:
            console.print(f"  trial {trial.number} failed: {trial_summary(trial).reason}", soft_wrap=True)
    return 0


def _yaml_scalar(text: str) -> str:
    """``text`` as it can stand after ``key:`` (before a comment): plain if YAML reads it back
    unchanged, else double-quoted (a JSON string is a YAML string)."""
    try:
        plain = yaml.safe_load(f"key: {text}  # comment") == {"key": text}
    except yaml.YAMLError:
        plain = False
    return text if plain and "\n" not in text else json.dumps(text)


def starter_config(path: Path, name: str, manifest: str) -> str:
    """The commented starter study.yaml; a name the study config would refuse is refused now."""
    from aam_search.search.config import STUDY_NAME_PATTERN, STUDY_NAME_RULE

    if not re.fullmatch(STUDY_NAME_PATTERN, name):
        raise SystemExit(f"--name {name!r}: a study name {STUDY_NAME_RULE}")
    return STARTER_CONFIG.format(path=json.dumps(str(path))[1:-1], name=name, manifest=_yaml_scalar(manifest))


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.exists() and not args.force:
        raise SystemExit(f"{path} exists; pass --force to overwrite")
    text = starter_config(path, args.name, args.manifest)
    path.write_text(text)
    console.print(f"wrote {path}; edit data.manifest and run: aam-search start --config {path}")
    return 0


def add_study_commands(sub: argparse._SubParsersAction) -> None:
    start = sub.add_parser("start", help="run (or resume) a study from a config")
    start.add_argument("--config", required=True)
    start.add_argument("--prepare-only", action="store_true",
                       help="extract features, compute the raw baseline and create the study; run no trial")
    start.set_defaults(func=cmd_start)

    worker = sub.add_parser("worker", help="join an existing study from this machine")
    worker.add_argument("--study", required=True)
    worker.add_argument("--storage", required=True, help="the study's SQLAlchemy URL (e.g. PostgreSQL)")
    worker.add_argument("--workdir", help="where this worker keeps trial folders (default: the study's)")
    worker.add_argument("--tracking-uri", help="MLflow tracking URI with its credentials (default: "
                        "$AAM_TRACKING_URI, else the study's, which never holds a password)")
    worker.add_argument("--allow-plugin", action="append", metavar="MODULE:FACTORY",
                        help="run this plug-in encoder if the study names it (the study's database "
                             "alone never makes a worker import code); repeatable")
    worker.set_defaults(func=cmd_worker)

    for name, func, helptext in (("front", cmd_front, "show the Pareto front"),
                                 ("status", cmd_status, "show trial counts and failures")):
        parser = sub.add_parser(name, help=helptext)
        parser.add_argument("study")
        parser.add_argument("--storage", help="default: SQLite in work/<study>")
        if name == "front":
            parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
            parser.add_argument("--all", action="store_true", help="csv/json: every trial, not just the front")
        parser.set_defaults(func=func)

    init = sub.add_parser("init", help="write a commented starter study.yaml")
    init.add_argument("--out", default="study.yaml")
    init.add_argument("--name", default="my-study")
    init.add_argument("--manifest", default="data/manifest.csv")
    init.add_argument("--force", action="store_true")
    init.set_defaults(func=cmd_init)
