"""The study config: data, search space, objectives, sampler, budget and dispatch.

Relative paths in a YAML file are relative to the file. Everything has a default, so
``StudyConfig(name=..., data=...)`` alone runs a study on one machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from aam_search.features.config import (
    ClipConfig,
    ConfigError,
    EncoderConfig,
    STRICT,
    Seed,
    format_validation_error,
    load_yaml_mapping,
)
from aam_search.redact import has_hidden_secret, redact
from aam_search.search.objectives import kind_of
from aam_search.trainer.config import EvalConfig, OptimConfig

# Where a worker (or ``promote``) finds a tracking URI that holds a password: the study keeps
# only the redacted URI, so the secret comes from this machine, never from the database.
TRACKING_URI_ENV = "AAM_TRACKING_URI"
SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random", "grid")
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
STUDY_NAME_RULE = "starts with a letter or digit and holds only letters, digits, '_', '.' and '-'"


def default_startup_trials(n_trials: int) -> int:
    """A third of a study's trials at random before the sampler models, within 2..10."""
    return min(10, max(2, n_trials // 3))


def default_workdir(name: str) -> Path:
    return Path("work") / name


def default_storage(name: str) -> str:
    return f"sqlite:///{(default_workdir(name) / 'optuna.db').resolve()}"


class DataConfig(BaseModel):
    """Where the features come from: a manifest to extract, or a ready cache."""

    model_config = STRICT

    manifest: Path | None = Field(default=None, strict=False)
    cache: Path | None = Field(default=None, strict=False)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    clips: ClipConfig = Field(default_factory=ClipConfig)
    cache_root: Path | None = Field(default=None, strict=False, description="default: <workdir>/cache")
    decode_workers: int = Field(default=2, ge=1)
    strict: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.manifest is None) == (self.cache is None):
            raise ValueError("give exactly one of data.manifest (extract features) or data.cache (ready cache)")
        return self


class EarlyStoppingConfig(BaseModel):
    """MO-ASHA (search/early_stopping.py): rungs at ``min_epochs * reduction_factor**k``."""

    model_config = STRICT

    kind: Literal["mo-asha"] = "mo-asha"
    min_epochs: int = Field(default=1, ge=1, description="the first rung's epoch")
    reduction_factor: int = Field(default=3, ge=2, description="eta: the top 1/eta of a rung go on")


# The trial's epochs when the study's trial config leaves them out: the trainer's own default.
DEFAULT_TRIAL_EPOCHS: int = OptimConfig.model_fields["epochs"].default


class StudyConfig(BaseModel):
    model_config = STRICT

    name: str = Field(pattern=STUDY_NAME_PATTERN, description=f"a study name {STUDY_NAME_RULE}")
    workdir: Path | None = Field(default=None, strict=False, description="default: work/<name>")
    storage: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in workdir")
    data: DataConfig
    space: str | dict[str, Any] = "loss-weights"
    trial: dict[str, Any] = Field(default_factory=dict, description="TrialConfig fields shared by every trial")
    objectives: list[str] = Field(default_factory=lambda: ["utility", "leakage"], min_length=2)
    max_utility_drop: float | None = Field(default=None, ge=0, description="constraint, relative to raw")
    sampler: Literal["tpe", "nsga2", "nsga3", "gp", "random", "grid"] = "tpe"  # won bench/search_efficiency.py (5 seeds)
    seed: Seed = 0
    n_trials: int = Field(default=12, ge=1)
    startup_trials: int | None = Field(default=None, ge=1, description="trials tpe and gp draw at random "
                                       "before they model; default n_trials // 3 within 2..10")
    enqueue_paper_default: bool = True
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="points to try first")
    max_parallel: int = Field(default=1, ge=1, description="concurrent trials on CPU")
    gpus_per_trial: int = Field(default=1, ge=1)
    stack: int = Field(default=1, ge=1, description="trials trained as one vmapped model in one process "
                       "when the space varies only per-trial scalars (search/stacking.py)")
    trial_timeout_s: float = Field(default=3600, gt=0)
    max_retries: int = Field(default=1, ge=0, description="re-runs of a trial that crashed or timed out")
    heartbeat_interval_s: int = Field(default=10, ge=1)
    heartbeat_grace_s: int = Field(default=60, ge=2)
    base_port: int = Field(default=29500, ge=1024, le=65000, description="first accelerate main-process port")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI; default sqlite in workdir")
    track: bool = Field(default=True, description="log the study, its trials and fronts to MLflow")
    early_stopping: EarlyStoppingConfig | None = Field(default=None, description="off by default")

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: list[str]) -> list[str]:
        for name in value:
            kind_of(name)  # UnknownObjective (a ValueError) names it and lists the known ones
        if len(set(value)) != len(value):
            raise ValueError("objectives repeat")
        return value

    @field_validator("trial")
    @classmethod
    def _trial_has_no_cache(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "cache" in value:
            raise ValueError("trial.cache is set by the study from data.*; remove it")
        evaluation = value.get("eval")
        split = evaluation.get("split", "val") if isinstance(evaluation, dict) else "val"
        if split != "val":
            raise ValueError(
                f"trial.eval.split is {split!r}: the search scores trials on the val split only; the test "
                "split stays unseen until `aam-search promote` evaluates the chosen adapter on it"
            )
        return value

    @model_validator(mode="after")
    def _early_stopping_fits(self) -> StudyConfig:
        stopping = self.early_stopping
        if stopping is None:
            return self
        if self.sampler == "grid":
            raise ValueError("early_stopping: the grid sampler runs every point to the end; drop "
                             "early_stopping or choose another sampler")
        optim = self.trial.get("optim")
        epochs = optim.get("epochs", DEFAULT_TRIAL_EPOCHS) if isinstance(optim, dict) else DEFAULT_TRIAL_EPOCHS
        if isinstance(epochs, int) and stopping.min_epochs >= epochs:
            raise ValueError(f"early_stopping.min_epochs ({stopping.min_epochs}) must be below the trial's "
                             f"epochs (trial.optim.epochs = {epochs}), or no rung comes before the end")
        return self

    @model_validator(mode="after")
    def _space_fits(self) -> StudyConfig:
        space = self.space
        if isinstance(space, str) and not Path(space).is_absolute() and space.endswith((".yaml", ".yml")):
            return self  # relative to the study file: load_study_config checks it once resolved
        check_space(self)
        return self

    @model_validator(mode="after")
    def _protocol_objectives_measured(self) -> StudyConfig:
        # A trial measures only its eval.protocols: an objective on another one would read a
        # missing value in every trial and fail the whole budget; say so before anything runs.
        evaluation = self.trial.get("eval")
        protocols = evaluation.get("protocols") if isinstance(evaluation, dict) else None
        if not isinstance(protocols, (list, tuple)):
            protocols = EvalConfig.model_fields["protocols"].default
        for name in self.objectives:
            kind, _, protocol = name.partition(":")
            if kind == "leakage" and protocol and protocol not in protocols:
                raise ValueError(f"objective {name!r} needs protocol {protocol!r}, but trial.eval.protocols "
                                 f"is {list(protocols)}; add it there or drop the objective")
        return self

    @model_validator(mode="after")
    def _default_workdir(self) -> StudyConfig:
        if self.workdir is None:
            self.workdir = default_workdir(self.name)
        return self

    @property
    def sampler_startup(self) -> int:
        """The random trials tpe and gp draw first: given, or a third of the study within 2..10."""
        return self.startup_trials or default_startup_trials(self.n_trials)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.workdir / 'optuna.db').resolve()}"

    @property
    def trials_dir(self) -> Path:
        """This study's trial folders: keyed by study, so studies sharing a workdir never
        overwrite each other's (``name``'s pattern keeps it one safe path component)."""
        return self.workdir / "trials" / self.name

    def record(self) -> dict[str, Any]:
        """What the study keeps of this config (``aam:config``): everything, with the storage
        URL and the tracking URI redacted. Anyone who can read the study (a dashboard, any
        worker) reads this, so it never holds a password."""
        data = json.loads(self.model_dump_json())
        data["storage"] = redact(self.storage_url)
        if self.tracking_uri is not None:
            data["tracking_uri"] = redact(self.tracking_uri)
        return data


def check_space(config: StudyConfig) -> None:
    """Refuse, before any extraction, what the space makes impossible: ``sampler: grid`` on a
    space that is no grid, and ``enqueue`` points the space cannot hold (each named)."""
    from aam_search.spaces import resolve_space

    space = resolve_space(config.space)
    if config.sampler == "grid":
        problem = space.grid_problem()
        if problem:
            raise ValueError(
                f"sampler: 'grid' needs a space of categorical, int and fixed parameters only (e.g. the "
                f"'paper' preset), but in space '{space.name}' {problem}; choose another sampler"
            )
    if config.early_stopping is not None and "optim.epochs" in space.params:
        lowest = min(_param_values(space.params["optim.epochs"]), default=None)
        if lowest is not None and config.early_stopping.min_epochs >= lowest:
            raise ValueError(
                f"early_stopping.min_epochs ({config.early_stopping.min_epochs}) must be below every epochs "
                f"the space can choose, but in space '{space.name}' optim.epochs goes down to {lowest}")
    problems = [f"enqueue[{index}] {point}: {problem}"
                for index, point in enumerate(config.enqueue) for problem in space.point_problems(point)]
    if problems:
        raise ValueError("\n".join(problems))


def _param_values(spec: Any) -> list[float]:
    """The numbers a space parameter can take at its ends (low, the choices, its value)."""
    values = {"float": [spec.low], "int": [spec.low], "categorical": spec.choices, "fixed": [spec.value]}
    return [v for v in values.get(spec.type) or [] if isinstance(v, (int, float)) and not isinstance(v, bool)]


def parse_study_config(data: dict[str, Any], source: str = "study config") -> StudyConfig:
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_study_config(path: str | Path, **overrides: Any) -> StudyConfig:
    """Load a study YAML; relative paths are resolved against the file's folder."""
    path = Path(path)
    data = load_yaml_mapping(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    config = parse_study_config(data, str(path))
    base = path.parent.resolve()

    def absolute(value: Path | None) -> Path | None:
        return value if value is None or value.is_absolute() else base / value

    data_config = config.data.model_copy(
        update={"manifest": absolute(config.data.manifest), "cache": absolute(config.data.cache),
                "cache_root": absolute(config.data.cache_root)}
    )
    space = config.space
    if isinstance(space, str) and (space.endswith((".yaml", ".yml"))):
        space = str(absolute(Path(space)))
    config = config.model_copy(update={"workdir": absolute(config.workdir), "data": data_config, "space": space})
    from aam_search.spaces import SpaceError

    try:
        check_space(config)
    except SpaceError:
        raise  # names its file and parameter already
    except ValueError as error:
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(error).splitlines())) from None
    return config


def local_tracking_uri(given: str | None, stored: str | None, *, what: str) -> str | None:
    """The tracking URI a worker or ``promote`` uses: ``given`` on its command line, else
    ``$AAM_TRACKING_URI``, else the study's ``stored`` one, which must not be a redacted URI
    (its password is not in the study; it has to come from this machine)."""
    uri = given or os.environ.get(TRACKING_URI_ENV) or stored
    if has_hidden_secret(uri):
        raise ConfigError(
            f"{what}: the study's tracking URI {uri} has its password hidden (the study never stores it); "
            f"give the full URI with --tracking-uri or in the environment variable {TRACKING_URI_ENV} "
            "(for an MLflow server, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD also work)"
        )
    return uri


def worker_config(stored: dict[str, Any], *, study: str, storage: str, workdir: str | Path | None = None,
                  tracking_uri: str | None = None, allow_plugins: Iterable[str] = ()) -> StudyConfig:
    """A worker's config, rebuilt from the record a study keeps (``StudyConfig.record``).

    That record comes from the database, which must never choose code for the worker to run:
    a plug-in encoder (``module:callable``) is refused unless this worker allows it itself
    (``allow_plugins``, from ``aam-search worker --allow-plugin``). The storage URL is the
    worker's own (it holds the password), and so is the tracking URI when the stored one is
    redacted (see :func:`local_tracking_uri`).
    """
    from aam_search.encoders.registry import require_allowed_encoder

    source = f"config stored in study {study!r}"
    data = dict(stored)
    data["storage"] = storage
    if workdir:
        data["workdir"] = str(workdir)
    if data.get("track", True):
        data["tracking_uri"] = local_tracking_uri(tracking_uri, data.get("tracking_uri"), what=source)
    config = parse_study_config(data, source)
    require_allowed_encoder(config.data.encoder.name, allow_plugins, source=source,
                            hint="run the worker with --allow-plugin {name} if you trust it")
    return config
