"""The Optuna side: storage, sampler, directions, and the trial budget shared by workers.

Budget: a *slot* is one configuration the study owes. A new trial takes a new slot (its
own number); a retry of a crashed trial re-uses the slot of the trial it repeats (carried
in the ``aam:slot`` user attribute, which Optuna's heartbeat retry copies along). Trial
``n`` may start only if fewer than ``n_trials`` slots were opened by trials numbered below
``n``; that depends only on earlier trial numbers, which the database hands out atomically,
so workers racing for the last slot can never overshoot the budget.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from aam_search.errors import AamSearchError
from aam_search.redact import redact
from aam_search.search import optuna_access as private
from aam_search.search.config import StudyConfig
from aam_search.search.objectives import direction
from aam_search.search.record import has_slot, is_discarded, slot_of, write_discarded, write_slot
from aam_search.search.storage import (
    OPTUNA,
    Database,
    StorageError,
    connect_args,
    creation_lock,
    inspect_database,
    is_ready,
    refuse_foreign,
    retry_creation_race,
)
from aam_search.trainer.config import LossConfig, OptimConfig
from aam_search.trainer.model import AdapterConfig

# We drive heartbeats ourselves in an ask/tell loop (trials are child processes), which
# Optuna supports but flags as experimental; the warnings would only alarm users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

def trainer_defaults() -> dict[str, Any]:
    """Dotted field -> what a trial runs with when the field is not set: the loss and
    adapter defaults, and as ``optim.lr`` the lr of the default batch (``effective_lr``)."""
    defaults = {f"loss.{name}": value for name, value in LossConfig().model_dump(mode="json").items()}
    defaults.update({f"adapter.{name}": value for name, value in AdapterConfig().model_dump(mode="json").items()})
    defaults["optim.lr"] = OptimConfig().effective_lr
    return defaults


# The paper's configuration is the trainer's defaults (tests/trainer/test_config.py holds them
# to the paper): w_LC=100, w_T=1, w_B=1, tau 0.1, a 3-layer 8-head attention AAM, none of the
# project's additions, at the project's default lr (the paper's 1e-4 at batch 512 belongs with
# its 100 epochs of a large dataset; the `paper` space preset has all of it).
PAPER_FIELDS = (
    "loss.w_lc", "loss.w_task", "loss.w_privacy", "loss.temperature", "loss.privacy_objective",
    "adapter.kind", "adapter.layers", "adapter.heads", "adapter.ffn_mult", "adapter.dropout",
    "optim.lr", "loss.w_hsic", "loss.hsic_condition", "loss.eraser",
)
# Where the paper's point cannot be the default: HSIC off (0) cannot lie in a log range.
PAPER_CHOICES = {"loss.w_hsic": 0.01}  # as good as off
PAPER_DEFAULT = {name: PAPER_CHOICES.get(name, trainer_defaults()[name]) for name in PAPER_FIELDS}


def make_sampler(config: StudyConfig, grid: dict[str, list] | None) -> optuna.samplers.BaseSampler:
    seed = config.seed
    name = config.sampler
    if name == "tpe":
        # Stacked trials are asked together: the liar keeps TPE from proposing one point K times.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.sampler_startup,
                                          constant_liar=config.stack > 1)
    if name in ("nsga2", "nsga3"):
        genetic = optuna.samplers.NSGAIISampler if name == "nsga2" else optuna.samplers.NSGAIIISampler
        return genetic(seed=seed, population_size=max(4, min(20, config.n_trials // 3)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.sampler_startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if grid is None:
            raise ValueError("sampler 'grid' needs a space of categorical choices only (e.g. the 'paper' preset)")
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def make_storage(config: StudyConfig, *, create: bool = True) -> optuna.storages.BaseStorage:
    """The study's storage with our heartbeats. ``create``: create the schema if needed
    (``start``); otherwise (a ``worker``) it must be there already."""
    # Trials run in child processes, so the orchestrator beats for them; a worker that dies
    # stops beating, and another worker fails and re-enqueues its trials.
    return open_storage(
        config.storage_url,
        create=create,
        study_name=config.name,
        heartbeat_interval=config.heartbeat_interval_s,
        grace_period=config.heartbeat_grace_s,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=config.max_retries),
    )


def open_storage(url: str, *, create: bool, study_name: str = "", **options: Any) -> optuna.storages.RDBStorage:
    """Optuna's ``RDBStorage`` at ``url``, refusing a database of anything else.

    ``create``: create the schema if needed, holding the creation lock (so no other opener
    races it). Otherwise (``status``, ``front``, a ``worker``) nothing is ever created: a
    database that is absent, empty or still being created is :class:`StudyNotFound`.
    """
    db = Database(url, OPTUNA, redact(url))
    path = db.file
    if path is not None and not create and not path.exists():
        raise StudyNotFound(f"no study database at {path} (give --storage)")
    with creation_lock(db, exclusive=create):
        found = inspect_database(db)
        refuse_foreign(db, found)
        if not create and not is_ready(db, found):
            raise StudyNotFound(f"no study named {study_name!r} in {db.name} (it holds none yet; "
                                "aam-search start creates it)")
        # skip_table_creation skips only create_all: Optuna still writes its version row and
        # alembic stamp when they are missing, hence the is_ready check above for readers.
        engine_kwargs: dict[str, Any] = {"connect_args": connect_args(url)}
        if not url.startswith("sqlite"):
            engine_kwargs["pool_pre_ping"] = True
        try:
            return retry_creation_race(lambda: optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, skip_table_creation=not create, **options))
        except Exception as error:  # driver missing, server gone, schema of another Optuna version, ...
            raise db.failure(error) from None


def open_study(config: StudyConfig, grid: dict[str, list] | None = None, *, create: bool = True) -> optuna.Study:
    """The study of ``config``: created (schema, study, objective names) by ``start``,
    only loaded by a ``worker`` (``create=False``)."""
    optuna.logging.set_verbosity(logging.WARNING)
    storage = make_storage(config, create=create)
    sampler = make_sampler(config, grid)
    if not create:
        try:
            return optuna.load_study(study_name=config.name, storage=storage, sampler=sampler)
        except KeyError:
            raise StudyNotFound(f"no study named {config.name!r} in {redact(config.storage_url)}") from None
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        sampler=sampler,
        directions=[direction(name) for name in config.objectives],
        load_if_exists=True,
    )
    existing = study.directions
    wanted = [optuna.study.StudyDirection.MINIMIZE if direction(n) == "minimize"
              else optuna.study.StudyDirection.MAXIMIZE for n in config.objectives]
    names = study.metric_names
    if list(existing) != wanted or (names is not None and list(names) != list(config.objectives)):
        raise StorageError(
            f"study {config.name!r} already exists in {redact(config.storage_url)} with other objectives "
            f"({', '.join(names or [d.name.lower() for d in existing])}); use another name"
        )
    if names is None:  # a new study: optuna-dashboard and trials_dataframe() show the names
        study.set_metric_names(list(config.objectives))
    return study


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The study's trials less those discarded because the budget was reached."""
    return [t for t in trials if not is_discarded(t)]


def opened_slots(trials: list[FrozenTrial], below: int | None = None) -> set[int]:
    return {
        slot_of(t)
        for t in trials
        if not is_discarded(t) and (below is None or t.number < below)
    }


def study_finished(trials: list[FrozenTrial], budget: int) -> bool:
    """Every slot opened and nothing left to run (retries of dead workers included)."""
    pending = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    return len(opened_slots(trials)) >= budget and not pending


def admit(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Claim a slot for a freshly asked trial, or discard it when the budget is spent."""
    frozen = private.frozen(study, trial)
    if has_slot(frozen):  # a retry: it re-uses its slot
        return True
    trials = study.get_trials(deepcopy=False)
    if len(opened_slots(trials, below=trial.number)) >= budget:
        write_discarded(trial)
        study.tell(trial, state=TrialState.FAIL)
        return False
    write_slot(trial, trial.number)
    return True


def waiting_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def enqueue_start_points(study: optuna.Study, config: StudyConfig, space_params: set[str]) -> None:
    """The paper's default first, then the user's points; each only once per study."""
    points: list[dict[str, Any]] = []
    if config.enqueue_paper_default:
        points.append({k: v for k, v in PAPER_DEFAULT.items() if k in space_params})
    points.extend(config.enqueue)
    for point in points:
        params = {k: v for k, v in point.items() if k in space_params}
        if params:
            study.enqueue_trial(params, skip_if_exists=True)


def load_existing_study(name: str, storage: str | None) -> optuna.Study:
    """Open a study someone started, creating nothing; the message names the storage when
    it is not there."""
    from aam_search.search.config import default_storage

    url = storage or default_storage(name)
    optuna.logging.set_verbosity(logging.WARNING)
    rdb = open_storage(url, create=False, study_name=name)
    try:
        return optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        rdb.engine.dispose()
        raise StudyNotFound(f"no study named {name!r} in {redact(url)}") from None


def close_study(study: optuna.Study) -> None:
    """Let go of the database connections of a study opened here (a poller opens it often)."""
    storage = private.rdb_storage_of(study)
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()


class StudyNotFound(AamSearchError, LookupError):
    """The named study does not exist in the given storage."""
