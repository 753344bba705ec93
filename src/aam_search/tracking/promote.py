"""Promotion: pick a trial, re-evaluate it on the held-out test split, register its adapter.

The rules that pick the trial are in :mod:`aam_search.search.selection` (``trial=N``,
``max_utility_drop=X``, the default, or ``knee``); the test-split evaluation is
:mod:`aam_search.trainer.heldout_eval`. This module finds the trial's files, writes the
``test_*`` metrics on the trial's MLflow run, logs the adapter there as a pyfunc model and
registers it as a new version of ``aam-<study>`` with the alias (``champion`` by default)
moved onto it. Earlier versions stay. Every check runs before anything is written, so a
failed promotion leaves the registry as it was.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from aam_search.protocol import ADAPTER_FILE, CONFIG_FILE
from aam_search.redact import redact
from aam_search.search.record import out_dir_of
from aam_search.search.selection import SelectionError, choose_trial
from aam_search.tracking.errors import PromotionError
from aam_search.tracking.store import (
    artifact_location,
    connect,
    default_tracking_uri,
    ensure_experiment,
    experiment_name,
    fluent_uri,
    model_name,
    quiet_downloads,
    resolve_tracking_uri,
)
from aam_search.trainer.heldout_eval import HeldOutError, evaluate_on_test

logger = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")
MODEL_ARTIFACT = "adapter"  # the model's name inside the run (models:/... resolve to it)


def pip_requirements() -> list[str]:
    """Explicit requirements of the pyfunc, so MLflow does not infer them (slowly)."""
    from importlib.metadata import PackageNotFoundError, version

    def pinned(package: str, fallback: str) -> str:
        try:
            return f"{package}=={version(package)}"
        except PackageNotFoundError:
            return fallback

    return [pinned("aam-search", "aam-search"), "torch>=2.2", "safetensors>=0.4", "numpy>=1.24",
            "pydantic>=2.5", pinned("mlflow", "mlflow>=3.0")]


@dataclass
class Promotion:
    study: str
    trial: int
    rule: str
    model_name: str
    version: str
    alias: str
    run_id: str
    tracking_uri: str
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def select(trials: list[FrozenTrial], objectives: list[str], **rule: Any) -> tuple[FrozenTrial, str]:
    """:func:`~aam_search.search.selection.choose_trial`, its refusal as a :class:`PromotionError`."""
    try:
        return choose_trial(trials, objectives, **rule)
    except SelectionError as error:
        raise PromotionError(str(error)) from None


# ---------------------------------------------------------------- finding what to promote
def study_tracking_uri(study: Any, tracking_uri: str | None) -> str:
    """The tracking URI of a study: the given one (or ``$AAM_TRACKING_URI``), the one it was
    tracked in, or the default in its work folder. The study keeps URIs redacted, so one
    with a password must be given (:func:`~aam_search.search.config.local_tracking_uri`)."""
    from aam_search.redact import has_hidden_secret
    from aam_search.search.config import local_tracking_uri
    from aam_search.search.record import stored_config, tracked_run

    stored = stored_config(study)
    workdir = stored.get("workdir") or f"work/{study.study_name}"
    # The study keeps only redacted URIs: a password comes from --tracking-uri or the environment.
    known = [u for u in (tracked_run(study)[1], stored.get("tracking_uri")) if u]
    usable = [u for u in known if not has_hidden_secret(u)]  # studies of older versions kept it in clear
    uri = local_tracking_uri(tracking_uri, (usable or known or [None])[0], what=f"study {study.study_name!r}")
    return resolve_tracking_uri(uri, workdir) if uri else default_tracking_uri(workdir)


def trial_run(client: Any, experiment_id: str, number: int) -> Any | None:
    """The MLflow run of trial ``number`` (the last one if several), or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`optuna.trial_number` = '{number}' and tags.`aam.role` = 'trial'",
        order_by=["attributes.start_time DESC"], max_results=5,
    )
    return runs[0] if runs else None


def _trial_files(client: Any, run: Any | None, trial: FrozenTrial, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The adapter checkpoint and resolved config of a trial: from its MLflow run's artifacts,
    else from its trial folder."""
    if run is not None:
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        if {ADAPTER_FILE, CONFIG_FILE} <= names:
            adapter = Path(client.download_artifacts(run.info.run_id, ADAPTER_FILE, str(folder)))
            config = Path(client.download_artifacts(run.info.run_id, CONFIG_FILE, str(folder)))
            return adapter, yaml.safe_load(config.read_text()) or {}
    out_dir = out_dir_of(trial)
    if out_dir and (Path(out_dir) / ADAPTER_FILE).is_file() and (Path(out_dir) / CONFIG_FILE).is_file():
        return Path(out_dir) / ADAPTER_FILE, yaml.safe_load((Path(out_dir) / CONFIG_FILE).read_text()) or {}
    raise PromotionError(f"trial {trial.number} has no {ADAPTER_FILE} and {CONFIG_FILE}, neither in MLflow "
                         f"nor in its trial folder {out_dir or '(unknown)'}")


def held_out_metrics(adapter_path: Path, trial_config: dict[str, Any], cache_path: str | Path | None = None
                     ) -> dict[str, float]:
    """The adapter's test-split numbers as ``test_*`` metrics (fresh attackers and probes)."""
    from aam_search.tracking.params import final_metrics

    try:
        result = evaluate_on_test(adapter_path, trial_config, cache_path)
    except HeldOutError as error:
        raise PromotionError(str(error)) from None
    return {f"test_{k}": v for k, v in final_metrics(result).items()}


# ---------------------------------------------------------------- promotion
def promote(
    study_name: str,
    *,
    storage: str | None = None,
    trial: int | None = None,
    max_utility_drop: float | None = None,
    knee: bool = False,
    alias: str = "champion",
    tracking_uri: str | None = None,
    cache: str | Path | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> Promotion:
    """Promote one trial of ``study_name``; see the module docstring for the rules."""
    from aam_search.search.record import stored_baseline, stored_config, stored_objectives, trial_summary
    from aam_search.search.study import load_existing_study

    if sum([trial is not None, max_utility_drop is not None, knee]) > 1:
        raise PromotionError("give at most one of trial, max_utility_drop and knee")
    _check_alias(alias)
    study = load_existing_study(study_name, storage)
    trials = study.get_trials(deepcopy=False)
    objectives = stored_objectives(study)
    chosen, rule = select(trials, objectives, trial=trial, max_utility_drop=max_utility_drop, knee=knee,
                          baseline=stored_baseline(study))
    summary = trial_summary(chosen)
    shown = {"utility": summary.utility, "leakage": summary.leakage, "utility_drop": summary.utility_drop}
    say(f"chose trial {chosen.number} ({rule}); validation: "
        + ", ".join(f"{key} {'n/a' if value is None else format(value, '.4f')}" for key, value in shown.items()))
    uri = study_tracking_uri(study, tracking_uri)
    client = connect(uri)
    workdir = stored_config(study).get("workdir") or f"work/{study_name}"
    experiment = client.get_experiment_by_name(experiment_name(study_name))
    run = trial_run(client, experiment.experiment_id, chosen.number) if experiment is not None else None
    with tempfile.TemporaryDirectory(prefix="aam-promote-") as folder, quiet_downloads():
        adapter_path, trial_config = _trial_files(client, run, chosen, Path(folder))
        say(f"evaluating trial {chosen.number} on the test split (fresh attackers and probes)")
        test_metrics = held_out_metrics(adapter_path, trial_config, cache)
        # ---- everything checked: from here on MLflow is written
        if run is None:
            experiment_id = ensure_experiment(client, experiment_name(study_name), artifact_location(uri, workdir),
                                              tags={"aam.study": study_name})
            run = client.create_run(experiment_id, run_name=f"trial-{chosen.number}", tags={
                "aam.study": study_name, "aam.role": "trial", "optuna.trial_number": str(chosen.number),
                "optuna.state": TrialState.COMPLETE.name})
            client.set_terminated(run.info.run_id, status="FINISHED")
        run_id = run.info.run_id
        from mlflow.entities import Metric

        now = _now_ms()
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in test_metrics.items()])
        version = _register(uri, run_id, adapter_path, study_name, chosen, rule, test_metrics)
    name = model_name(study_name)
    client.set_registered_model_alias(name, alias, version)
    client.set_tag(run_id, f"aam.alias.{alias}", f"version {version}")
    say(f"registered {name} version {version} with alias {alias!r} in {redact(uri)}")
    return Promotion(study=study_name, trial=chosen.number, rule=rule, model_name=name, version=str(version),
                     alias=alias, run_id=run_id, tracking_uri=uri, test_metrics=test_metrics)


# MLflow's rule for a registered model alias, written out here: its validators are private and
# were renamed in MLflow 3.18 (``_validate_model_alias_name`` -> ``_validate_alias_name``).
ALIAS_PATTERN = re.compile(r"[\w\-]{1,255}")
RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)


def _check_alias(alias: str) -> None:
    if not ALIAS_PATTERN.fullmatch(alias):
        raise PromotionError(f"alias {alias!r} cannot be used: an alias is 1 to 255 letters, digits, "
                             "underscores (_) or dashes (-)")
    if RESERVED_ALIAS.fullmatch(alias):
        raise PromotionError(f"alias {alias!r} cannot be used: MLflow reserves 'latest' and version "
                             "names such as 'v3'")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _register(uri: str, run_id: str, adapter_path: Path, study_name: str, trial: FrozenTrial, rule: str,
              test_metrics: dict[str, float]) -> str:
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from aam_search.trainer.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(adapter_path)
    dim = int(checkpoint.info["dim"])
    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, dim))])
    metadata = {
        "aam_search.study": study_name, "aam_search.trial": trial.number, "aam_search.rule": rule,
        "aam_search.dim": dim, "aam_search.adapter": checkpoint.info.get("adapter"),
        "aam_search.encoder": checkpoint.info.get("encoder"), "aam_search.cache_key": checkpoint.info.get("cache_key"),
    }
    name = model_name(study_name)
    with fluent_uri(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_CODE),
            artifacts={"adapter": str(adapter_path)},
            pip_requirements=pip_requirements(),
            signature=ModelSignature(inputs=spec, outputs=spec),
            input_example=np.zeros((1, 2, dim), dtype=np.float32),
            metadata=metadata,
        )
        version = mlflow.register_model(info.model_uri, name, tags={
            "aam.study": study_name, "aam.trial": str(trial.number), "aam.rule": rule,
            **{k: f"{v:.6g}" for k, v in test_metrics.items() if k in ("test_utility", "test_leakage")},
        })
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.update_model_version(name, version.version, description=(
        f"Anonymizing adapter of study {study_name}, trial {trial.number} ({rule}). Input and output: "
        f"float32 features [N, L, {dim}] of the frozen encoder. Test split: "
        + ", ".join(f"{k.removeprefix('test_')} {v:.4g}" for k, v in test_metrics.items()
                    if k in ("test_utility", "test_leakage", "test_utility_drop", "test_leakage_reduction"))))
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=(
            f"Anonymizing adapters promoted from study {study_name}. Load one with "
            f"aam_search.load_adapter('models:/{name}@champion', tracking_uri=...) or "
            f"mlflow.pyfunc.load_model(...)."))
    return str(version.version)
