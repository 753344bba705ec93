"""MLflow tracking of a study: one parent run for the study, one child run per trial.

:class:`StudyTracker` is a tuner callback (``search.callbacks``): it turns the tuner loop's
events into MLflow runs, metrics, tags and artifacts. The CLI and the demo build it
(:func:`study_tracker`) and hand it to the orchestrator. Only the orchestrator process talks
to MLflow; trial processes never import it (see ``tracking.mlflow_calls``).

- Experiment ``aam-<study>``; the parent run ``study-<study>`` holds the study's settings
  as params, the raw baseline, the hypervolume after each completed trial (step = number
  completed) and, refreshed after each completed trial, ``pareto_front.html``/``.png``,
  ``hypervolume.png``/``.csv`` and ``trials.csv``; once enough trials are complete, the
  parameter importances per objective (``param_importances.csv``/``.png`` and metrics
  ``importance.<objective>.<param>``, see :mod:`aam_search.tracking.importance`). Its id is
  kept in the Optuna study (``aam:mlflow_parent_run``), so a resumed study continues the same run.
- Child run ``trial-<n>`` per Optuna trial (tag ``mlflow.parentRunId``): the sampled
  params and the resolved trial config (``config.*``), per-epoch training metrics
  (``train/*``, step = epoch), the final metrics, tags ``optuna.trial_number``,
  ``optuna.state`` (COMPLETE, FAIL or PRUNED; a pruned run also has ``aam.rung``),
  ``aam.slot``, ``aam.failure_reason`` and ``pareto`` (re-tagged for every
  trial after each completion), and the trial folder's files as artifacts. A retry of a
  crashed trial is a new Optuna trial, so it gets its own run; the failed attempt's run ends
  FAILED with its reason and both carry the same ``aam.slot``.

MLflow failing mid-study does not stop the study: the tracker warns once, pauses for a
minute and tries again; everything stays recorded in Optuna.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from aam_search.protocol import CONFIG_FILE, TRIAL_FILES
from aam_search.redact import redact, scrub
from aam_search.search import optuna_access as private
from aam_search.search.callbacks import (
    EpochReported,
    StudyFinished,
    StudyPrepared,
    TrialCompleted,
    TrialFailed,
    TrialPruned,
    TrialStarted,
    TunerCallback,
)
from aam_search.search.config import StudyConfig
from aam_search.search.pareto import summarize_trials
from aam_search.search.record import (attempt_of, hypervolume_history, reason_of, slot_of, tracked_run,
                                      write_tracked_run)
from aam_search.search.shown import trial_rows
from aam_search.search.study import counted
from aam_search.tracking import importance
from aam_search.tracking.mlflow_calls import (existing_run, log_batched, log_files, runs_tagged,
                                             system_metrics_monitor)
from aam_search.tracking.params import (MAX_PARAM, final_metrics, final_tags, finite_float, flatten, metric_key,
                                        study_params)
from aam_search.tracking.plots import hypervolume_csv, hypervolume_png, pareto_html, pareto_png, write_csv
from aam_search.tracking.store import artifact_location, connect, ensure_experiment, experiment_name, resolve_tracking_uri

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"
PARETO_TAG = "pareto"
REASON_TAG = "aam.failure_reason"
RUNG_TAG = "aam.rung"  # a pruned trial's: the rung it was stopped at
PRUNE_REASON_TAG = "aam.prune_reason"
# protocol.TRIAL_FILES: the files of a trial folder logged as artifacts of its run (when present).
PAUSE_AFTER_ERROR_S = 60.0
MAX_TAG = 7900
# MLflow run status of a trial run, by its Optuna state (a pruned trial ended as planned).
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}

Handler = TypeVar("Handler", bound=Callable[..., None])


def _never_raises(*, even_paused: bool = False) -> Callable[[Handler], Handler]:
    """A tracker callback that never raises (a tracking failure must not stop the study),
    skipped before the parent run exists and, unless ``even_paused``, while paused."""
    def wrap(method: Handler) -> Handler:
        @functools.wraps(method)
        def guarded(self: StudyTracker, event: Any) -> None:
            if self.parent_run_id is None or (not even_paused and time.monotonic() < self._paused_until):
                return
            try:
                method(self, event)
            except Exception as error:
                self._warn_once(method.__name__, error)

        return guarded  # type: ignore[return-value]

    return wrap


@dataclass
class TrialRun:
    run_id: str
    out_dir: Path | None


def study_tracker(config: StudyConfig) -> StudyTracker | None:
    """The tracker a study asks for (None with ``track: false``), connected now: built before
    ``prepare``, an unreachable MLflow fails the start in seconds."""
    if not config.track:
        return None
    Path(config.workdir).mkdir(parents=True, exist_ok=True)  # the default store lives there
    return StudyTracker.connect(config)


class StudyTracker(TunerCallback):
    """Logs one study to MLflow; hand it to the orchestrator as one of its callbacks."""

    def __init__(self, config: StudyConfig, client: Any, uri: str, experiment_id: str, *,
                 system_metrics: bool = True):
        self.config = config
        self.client = client
        self.uri = uri
        self.experiment_id = experiment_id
        self.system_metrics = system_metrics
        self.parent_run_id: str | None = None
        self.runs: dict[int, TrialRun] = {}
        self.baseline: dict[str, float] = {}
        self.study: Any = None
        self._monitor: Any = None
        self._paused_until = 0.0
        self._warned = False
        self._importances_at = 0  # completed trials when importances were last computed

    # ------------------------------------------------------------------ setup
    @classmethod
    def connect(cls, config: StudyConfig, **kwargs: Any) -> StudyTracker:
        """Reach (and create or migrate, once) the tracking store and the study's experiment.

        Raises :class:`~aam_search.tracking.errors.TrackingUnavailable`, naming the URI,
        within seconds when the store cannot be reached.
        """
        uri = resolve_tracking_uri(config.tracking_uri, config.workdir)
        client = connect(uri)
        experiment_id = ensure_experiment(
            client, experiment_name(config.name), artifact_location(uri, config.workdir),
            tags={"aam.study": config.name},
        )
        return cls(config, client, uri, experiment_id, **kwargs)

    def open(self, study: Any, *, space: Any, base_trial: dict[str, Any], baseline: dict[str, float],
             worker: bool = False) -> str:
        """Create the study's parent run, or resume the one the study already has."""
        self.study = study
        self.baseline = dict(baseline)
        config = self.config
        shown_uri = redact(self.uri)
        run = None
        stored, stored_uri = tracked_run(study)
        if stored and stored_uri == shown_uri:
            run = existing_run(self.client, stored, self.experiment_id)
        tags = {
            "aam.study": config.name,
            "aam.role": "study",
            "aam.storage": redact(config.storage_url),
            "aam.workdir": str(Path(config.workdir).resolve()),
            "mlflow.note.content": self._note(),
        }
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=f"study-{config.name}", tags=tags)
            if not worker or not stored:  # a worker with a store of its own leaves the study's alone
                write_tracked_run(study, run.info.run_id, shown_uri)
            existing: dict[str, str] = {}
        else:
            existing = dict(run.data.params)
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            self._log(run.info.run_id, tags=tags | {"aam.resumed": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.parent_run_id = run.info.run_id
        params = study_params(config, space, base_trial)
        new = {k: v for k, v in params.items() if k not in existing}
        changed = {f"aam.param.{k}": v[:MAX_TAG] for k, v in params.items() if k in existing and existing[k] != v}
        self._log(self.parent_run_id, params=new, tags=changed)
        self._log(self.parent_run_id, metrics={f"raw_{metric_key(k)}": v for k, v in baseline.items()
                                               if finite_float(v) is not None})
        if self.system_metrics:
            self._monitor = system_metrics_monitor(self.parent_run_id, self.uri, resume=bool(existing), worker=worker)
        return self.parent_run_id

    def _note(self) -> str:
        name = self.config.name
        return (f"Study **{name}**: one child run per trial; the `pareto` tag marks the current "
                f"Pareto front (see the artifacts `pareto_front.html` and `trials.csv`).\n\n"
                f"Promote a trial to the model registry: `aam-search promote {name} --storage "
                f"{redact(self.config.storage_url)}`")

    # ------------------------------------------------------------------ the callback
    def on_study_prepared(self, event: StudyPrepared) -> None:
        self.open(event.study, space=event.space, base_trial=dict(event.base_trial), baseline=dict(event.baseline),
                  worker=event.worker)
        self._tag_prepared(event)

    @_never_raises()
    def _tag_prepared(self, event: StudyPrepared) -> None:
        self._log(self.parent_run_id, tags={"aam.cache": str(event.cache),
                                            "aam.gpus": ",".join(map(str, event.gpus)) or "cpu"})

    @_never_raises()
    def on_trial_started(self, event: TrialStarted) -> None:
        out_dir = Path(event.out_dir).resolve()
        run_id = self._create_trial_run(event.number, "RUNNING", devices=event.devices)
        self.runs[event.number] = TrialRun(run_id, out_dir)
        params = {str(k): str(v)[:MAX_PARAM] for k, v in event.params.items()}
        if (out_dir / CONFIG_FILE).is_file():
            params.update(flatten(yaml.safe_load((out_dir / CONFIG_FILE).read_text()) or {}, "config."))
        self._log(run_id, params=params)

    @_never_raises()
    def on_epoch_reported(self, event: EpochReported) -> None:
        run = self.runs.get(event.number)
        if run is None:
            return
        line = event.metrics
        step = int(line.get("epoch", 0))
        metrics = {f"train/{k}": v for k, v in line.items() if k != "epoch" and finite_float(v) is not None}
        self._log(run.run_id, metrics=metrics, step=step)

    @_never_raises()
    def on_trial_completed(self, event: TrialCompleted) -> None:
        run = self._end_run(event.number, "RUNNING")
        result = dict(event.result)
        self._log(run.run_id, metrics=final_metrics(result), tags={STATE_TAG: "COMPLETE", **final_tags(result)})
        self._log_trial_files(run)
        self.client.set_terminated(run.run_id, status=RUN_STATUS["COMPLETE"])
        self._refresh(hypervolume=event.hypervolume)

    @_never_raises()
    def on_trial_failed(self, event: TrialFailed) -> None:
        run = self._end_run(event.number, "FAIL")
        reason = str(event.reason or "unknown")
        tags = {STATE_TAG: "FAIL", REASON_TAG: reason[:MAX_TAG], "aam.retried": str(bool(event.retried)).lower()}
        self._log(run.run_id, tags=tags)
        self._log_trial_files(run)
        status = "KILLED" if reason.startswith("study interrupted") else RUN_STATUS["FAIL"]
        self.client.set_terminated(run.run_id, status=status)

    @_never_raises()
    def on_trial_pruned(self, event: TrialPruned) -> None:
        """Early stopping stopped it at a rung: PRUNED, with the rung and its objective
        values there (step = the rung's epoch)."""
        run = self._end_run(event.number, "PRUNED")
        metrics = {f"rung/{metric_key(name)}": value for name, value in zip(self.config.objectives, event.values,
                                                                            strict=False)
                   if finite_float(value) is not None}
        self._log(run.run_id, metrics={**metrics, "rung": event.rung}, step=event.epoch,
                  tags={STATE_TAG: "PRUNED", RUNG_TAG: str(event.rung), PRUNE_REASON_TAG: event.reason[:MAX_TAG]})
        self._log_trial_files(run)
        self.client.set_terminated(run.run_id, status=RUN_STATUS["PRUNED"])

    def _warn_once(self, event: str, error: Exception) -> None:
        """Pause tracking for a while; say so the first time only."""
        self._paused_until = time.monotonic() + PAUSE_AFTER_ERROR_S
        if not self._warned:
            self._warned = True
            logger.warning(
                "MLflow tracking at %s failed on %r (%s: %s); the study goes on and Optuna still "
                "records every trial. Tracking retries in %.0fs; further errors are not shown.",
                redact(self.uri), event, type(error).__name__, scrub(str(error), self.uri)[:300],
                PAUSE_AFTER_ERROR_S,
            )

    def _end_run(self, number: int, state: str) -> TrialRun:
        """The trial's run, taken out of the running ones (created now if it was started
        elsewhere or while tracking was paused)."""
        return self.runs.pop(number, None) or TrialRun(self._create_trial_run(number, state), None)

    @_never_raises(even_paused=True)
    def on_study_finished(self, event: StudyFinished) -> None:
        """This process's loop ended: refresh the parent run and end it, unless it finished
        its share while other workers still run trials (the last one ends it)."""
        from optuna.trial import TrialState

        try:
            if time.monotonic() >= self._paused_until:
                self._refresh(final=True)
            status = event.status
            others = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if status != "finished" or not others:
                self.client.set_terminated(self.parent_run_id,
                                           status={"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))
        finally:
            self.close()

    def close(self) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:
                pass
            self._monitor = None

    # ------------------------------------------------------------------ runs
    def _create_trial_run(self, number: int, state: str, devices: Any = None) -> str:
        frozen = private.frozen_by_number(self.study, number)
        tags = {
            PARENT_TAG: self.parent_run_id,
            "aam.study": self.config.name,
            "aam.role": "trial",
            TRIAL_TAG: str(number),
            STATE_TAG: state,
            PARETO_TAG: "false",
            "aam.slot": str(slot_of(frozen)),
            "aam.attempt": str(attempt_of(frozen)),
        }
        if devices is not None:
            tags["aam.devices"] = ",".join(map(str, devices)) or "cpu"
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=tags)
        return run.info.run_id

    def _log_trial_files(self, run: TrialRun) -> None:
        if run.out_dir is not None:
            log_files(self.client, run.run_id, run.out_dir, TRIAL_FILES)

    def _log(self, run_id: str, *, params: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
             tags: dict[str, str] | None = None, step: int = 0) -> None:
        log_batched(self.client, run_id, params=params, metrics=metrics, tags=tags, step=step)

    def child_runs(self) -> list[Any]:
        """Every trial run of this study's parent run (all workers' ones)."""
        return runs_tagged(self.client, self.experiment_id, PARENT_TAG, self.parent_run_id)

    # ------------------------------------------------------------------ study-wide refresh
    def _refresh(self, hypervolume: float | None = None, *, final: bool = False) -> None:
        """Re-tag ``pareto`` on every trial run, close runs of trials that ended elsewhere
        (a dead worker's), and rewrite the parent run's front, hypervolume and trial table
        (and, when due or ``final``, the parameter importances)."""
        from optuna.trial import TrialState

        objectives = self.config.objectives
        trials = counted(self.study.get_trials(deepcopy=False))
        by_number = {t.number: t for t in trials}
        points = summarize_trials(trials, objectives)
        front = {p.number for p in points if p.on_front}
        run_ids: dict[int, str] = {}
        for run in self.child_runs():
            try:
                number = int(run.data.tags.get(TRIAL_TAG, ""))
            except ValueError:
                continue
            run_ids[number] = run.info.run_id
            wanted = "true" if number in front else "false"
            if run.data.tags.get(PARETO_TAG) != wanted:
                self.client.set_tag(run.info.run_id, PARETO_TAG, wanted)
            trial = by_number.get(number)
            if run.info.status == "RUNNING" and number not in self.runs and trial is not None \
                    and trial.state.name in RUN_STATUS:
                tags = {STATE_TAG: trial.state.name}
                if trial.state == TrialState.FAIL:
                    tags[REASON_TAG] = (reason_of(trial) or "failed in another process")[:MAX_TAG]
                self._log(run.info.run_id, tags=tags)
                self.client.set_terminated(run.info.run_id, status=RUN_STATUS[trial.state.name])
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        if hypervolume is not None:
            self._log(self.parent_run_id, step=done, metrics={
                "hypervolume": hypervolume, "completed_trials": done, "front_size": len(front),
                "failed_trials": sum(t.state == TrialState.FAIL for t in trials),
            })
        history = hypervolume_history(self.study)
        title = f"study {self.config.name}: {done} completed, {len(front)} on the front"
        with tempfile.TemporaryDirectory(prefix="aam-mlflow-") as folder:
            folder_path = Path(folder)
            pareto_html(points, objectives, self.baseline, folder_path / "pareto_front.html", title, run_ids)
            pareto_png(points, objectives, self.baseline, folder_path / "pareto_front.png", title)
            hypervolume_png(history, folder_path / "hypervolume.png", f"hypervolume of study {self.config.name}")
            hypervolume_csv(history, folder_path / "hypervolume.csv")
            write_csv(trial_rows(points, objectives, run_ids), folder_path / "trials.csv")
            if importance.due(done, self._importances_at, final=final):
                self._importances_at = done
                metrics = importance.write_importances(trials, objectives, folder_path, f"study {self.config.name}")
                self._log(self.parent_run_id, metrics=metrics, step=done)
            self.client.log_artifacts(self.parent_run_id, folder)
