"""The study config: data, search space, objectives, sampler, budget and dispatch.

Relative paths in a YAML file are relative to the file. Everything has a default, so
``StudyConfig(name=..., data=...)`` alone runs a study on one machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aam_search.features.config import (
    ClipConfig,
    ConfigError,
    EncoderConfig,
    format_validation_error,
    load_yaml_mapping,
)

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random", "grid")
OBJECTIVE_PATTERN = re.compile(r"^(utility|leakage|leakage:(static|clip)|task:[\w.-]+|params|combined)$")


def default_workdir(name: str) -> Path:
    return Path("work") / name


def default_storage(name: str) -> str:
    return f"sqlite:///{(default_workdir(name) / 'optuna.db').resolve()}"


class DataConfig(BaseModel):
    """Where the features come from: a manifest to extract, or a ready cache."""

    model_config = ConfigDict(extra="forbid")

    manifest: Path | None = None
    cache: Path | None = None
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    clips: ClipConfig = Field(default_factory=ClipConfig)
    cache_root: Path | None = Field(default=None, description="default: <workdir>/cache")
    decode_workers: int = Field(default=2, ge=1)
    strict: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.manifest is None) == (self.cache is None):
            raise ValueError("give exactly one of data.manifest (extract features) or data.cache (ready cache)")
        return self


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    workdir: Path | None = Field(default=None, description="default: work/<name>")
    storage: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in workdir")
    data: DataConfig
    space: str | dict[str, Any] = "loss-weights"
    trial: dict[str, Any] = Field(default_factory=dict, description="TrialConfig fields shared by every trial")
    objectives: list[str] = Field(default_factory=lambda: ["utility", "leakage"], min_length=2)
    max_utility_drop: float | None = Field(default=None, ge=0, description="constraint, relative to raw")
    sampler: Literal["tpe", "nsga2", "nsga3", "gp", "random", "grid"] = "tpe"  # won bench/search_efficiency.py (5 seeds)
    seed: int = 0
    n_trials: int = Field(default=12, ge=1)
    enqueue_paper_default: bool = True
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="points to try first")
    max_parallel: int = Field(default=1, ge=1, description="concurrent trials on CPU")
    gpus_per_trial: int = Field(default=1, ge=1)
    trial_timeout_s: float = Field(default=3600, gt=0)
    max_retries: int = Field(default=1, ge=0, description="re-runs of a trial that crashed or timed out")
    heartbeat_interval_s: int = Field(default=10, ge=1)
    heartbeat_grace_s: int = Field(default=60, ge=2)
    base_port: int = Field(default=29500, ge=1024, le=65000, description="first accelerate main-process port")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI; default sqlite in workdir")
    track: bool = Field(default=True, description="log the study, its trials and fronts to MLflow")

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: list[str]) -> list[str]:
        for name in value:
            if not OBJECTIVE_PATTERN.match(name):
                raise ValueError(
                    f"unknown objective {name!r}; use utility, leakage, leakage:static, leakage:clip, "
                    "task:<name>, params or combined"
                )
        if len(set(value)) != len(value):
            raise ValueError("objectives repeat")
        return value

    @field_validator("trial")
    @classmethod
    def _trial_has_no_cache(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "cache" in value:
            raise ValueError("trial.cache is set by the study from data.*; remove it")
        return value

    @model_validator(mode="after")
    def _default_workdir(self) -> StudyConfig:
        if self.workdir is None:
            self.workdir = default_workdir(self.name)
        return self

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.workdir / 'optuna.db').resolve()}"

    @property
    def trials_dir(self) -> Path:
        """This study's trial folders: keyed by study, so studies sharing a workdir never
        overwrite each other's (``name``'s pattern keeps it one safe path component)."""
        return self.workdir / "trials" / self.name


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
    return config.model_copy(update={"workdir": absolute(config.workdir), "data": data_config, "space": space})
