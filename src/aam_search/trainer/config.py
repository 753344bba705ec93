"""The trial config: one YAML file fully describes one AAM training run.

Every field is validated; errors name the dotted field. ``resolved()`` fills derived values
(the scaled learning rate, the step budget) so that ``trial.json`` records what actually ran.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aam_search.features.config import STRICT, ConfigError, Seed, format_validation_error, load_yaml_mapping
from aam_search.trainer.model import AdapterConfig


class _Strict(BaseModel):
    model_config = ConfigDict(**STRICT, frozen=True)


class LossConfig(_Strict):
    """``w_lc * L_LC + w_task * L_T - w_privacy * L_B + w_hsic * L_HSIC``, then optionally a
    linear eraser. The paper's terms default to its 100, 1, 1; the project's additions are off.

    ``w_hsic`` and ``eraser`` need ``attr:`` labels in the train split; L_B (NT-Xent, either
    ``privacy_objective``) needs none.
    """

    w_lc: float = Field(default=100.0, ge=0)
    w_task: float = Field(default=1.0, ge=0)
    w_privacy: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=0.1, gt=0, description="NT-Xent tau (predecessor code: 0.1)")
    privacy_objective: Literal["selfsup", "adversarial"] = "selfsup"
    task_weights: dict[str, float] = Field(default_factory=dict, description="per task; default 1")
    projector_dim: int = Field(default=128, ge=1, description="adversarial projection head width")
    w_hsic: float = Field(default=0.0, ge=0, description="normalised HSIC between adapted features and attr: labels")
    hsic_condition: Literal["none", "action"] = Field(
        default="none", description="action: penalise only what the attributes add beyond the action"
    )
    eraser: bool = Field(default=False, description="fit a linear (LEACE) eraser of the attr: labels after training")


Residency = Literal["auto", "device", "streamed"]
RESIDENT_FRACTION = 0.5  # of the free device (or host) memory that resident features may take

DEFAULT_LR = 1e-3  # at DEFAULT_BATCH; see docs/decisions.md for the measurement
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class StepBudget:
    """What a trial's optimizer actually runs, once the train set's size is known."""

    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int


class OptimConfig(_Strict):
    """AdamW with linear warm-up then cosine decay, both counted in optimizer steps.

    Budget: ``epochs`` passes over the train videos, raised until the run takes at least
    ``min_steps`` steps (100 train videos at batch 64 make one step per epoch). lr: ``lr``
    if given, else ``base_lr`` at ``base_batch`` rescaled to ``batch_size`` by
    ``lr_scaling`` (sqrt: Adam's rule; linear: the paper's, 1e-4 at 512).
    """

    epochs: int = Field(default=20, ge=1)
    min_steps: int = Field(default=500, ge=0, description="epochs are raised to reach this many steps")
    batch_size: int = Field(default=DEFAULT_BATCH, ge=2, description=">= 2: NT-Xent needs negatives")
    lr: float | None = Field(default=None, gt=0, description="explicit lr; default: scaled base_lr")
    base_lr: float = Field(default=DEFAULT_LR, gt=0)
    base_batch: int = Field(default=DEFAULT_BATCH, ge=1)
    lr_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1, description="of the total steps")
    grad_clip: float | None = Field(default=1.0, gt=0)
    head_pretrain_epochs: int = Field(default=30, ge=0, description="task heads on raw features first")
    head_lr: float = Field(default=1e-3, gt=0)
    data_residency: Residency = Field(
        default="auto", description="auto: features on the device when they fit in resident_fraction of its free "
        "memory, else streamed (pinned, one batch ahead)")
    resident_fraction: float = Field(default=RESIDENT_FRACTION, gt=0, le=1)
    compile: bool = Field(default=False, description="torch.compile the adapter; its compile time goes in timings")

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        ratio = self.batch_size / self.base_batch
        return self.base_lr * {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[self.lr_scaling]

    def budget(self, steps_per_epoch: int) -> StepBudget:
        """Epochs raised to reach ``min_steps``; warm-up a fraction of the resulting steps."""
        steps_per_epoch = max(1, steps_per_epoch)
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        total = epochs * steps_per_epoch
        return StepBudget(steps_per_epoch, epochs, total, int(self.warmup_fraction * total))


AttackerKind = Literal["linear", "mlp", "mlp_deep", "knn"]  # trainer/attackers.py ATTACKER_KINDS


class EvalConfig(_Strict):
    """How a trial's features are judged; ``leakage`` is the worst case over ``protocols``."""

    split: Literal["val", "test"] = "val"
    protocols: tuple[Literal["static", "clip"], ...] = Field(default=("static", "clip"), strict=False)
    primary_protocol: Literal["static", "clip"] = Field(
        default="static", description="kept for old configs; leakage is the worst case over all protocols")
    attacker_epochs: int = Field(default=60, ge=1)
    probe_epochs: int = Field(default=60, ge=1)
    attackers: tuple[AttackerKind, ...] = Field(
        default=("linear", "mlp", "mlp_deep", "knn"), min_length=1, strict=False,
        description="the suite; the strongest counts")
    knn_k: int | None = Field(default=None, ge=1, description="kNN neighbours; None: inner leave-one-video-out CV")
    crossfit_folds: int = Field(default=5, ge=0, description="folds of the evaluation split; 0: train-then-score only")
    bootstrap_resamples: int = Field(default=1000, ge=0, description="per-video bootstrap draws; 0: no intervals")
    bootstrap_seed: int = Field(default=0, description="fixed, so every trial and the baseline share one draw")
    unseen_tasks: tuple[str, ...] = Field(
        default=(), strict=False, description="task:<name> columns that are probed but never co-trained")
    rungs: tuple[int, ...] = Field(
        default=(), strict=False,
        description="epochs (1-based) after which the trial runs the cheap rung evaluation; set by the study")
    rung_wait_s: float = Field(
        default=0.0, ge=0, description="how long a trial waits at a rung for the study's verdict; set by the study")

    @field_validator("rungs")
    @classmethod
    def _rungs_increase(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(r < 1 for r in value) or list(value) != sorted(set(value)):
            raise ValueError(f"rungs must be increasing epochs >= 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _primary_is_measured(self) -> EvalConfig:
        if self.primary_protocol not in self.protocols:
            raise ValueError(f"primary_protocol {self.primary_protocol!r} is not in protocols {self.protocols}")
        if self.crossfit_folds == 1:
            raise ValueError("crossfit_folds must be 0 (off) or at least 2")
        for task in self.unseen_tasks:
            if not re.fullmatch(r"task:[\w.-]+", task):
                raise ValueError(f"unseen_tasks entry {task!r} is not a task:<name> column")
        if len(set(self.unseen_tasks)) != len(self.unseen_tasks):
            raise ValueError("unseen_tasks repeat")
        return self


class GuardConfig(_Strict):
    """When a run counts as diverged rather than merely bad."""

    max_loss: float = Field(default=1e6, gt=0, description="|total loss| above this: diverged")
    max_lc: float = Field(default=1e3, gt=0, description="L_LC above this: adapter left the manifold")
    check_every: int = Field(
        default=50, ge=1, description="steps between the guard's host reads (one sync each); also at every epoch end")


class TrialConfig(_Strict):
    cache: Path = Field(strict=False)
    seed: Seed = 0
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    deepspeed: Path | None = Field(default=None, strict=False, description="DeepSpeed JSON config (ZeRO stage etc.)")
    save_adapter: bool = True

    @field_validator("cache", "deepspeed")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    def resolved(self, steps_per_epoch: int | None = None) -> dict:
        """The record of what ran (``trial.json``): the config as plain data plus what it
        resolves to, the effective lr and, given the train set's steps per epoch, the step
        budget (``optim.budget``). A record, not a config: the derived values are properties
        of the config and do not validate back; a config to hand on is ``model_dump()``."""
        data = self.model_dump(mode="json")
        data["optim"]["effective_lr"] = self.optim.effective_lr
        if steps_per_epoch is not None:
            data["optim"]["budget"] = asdict(self.optim.budget(steps_per_epoch))
        return data


def read_deepspeed_config(path: Path) -> dict:
    """The DeepSpeed JSON config of a trial; a file that is missing or not a JSON object is a
    ConfigError naming it (DeepSpeed itself says only ``Expecting value: line 1 column 1``)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the DeepSpeed config ({error.strerror or error})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: the DeepSpeed config is not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the DeepSpeed config must be a JSON object, not {type(data).__name__}")
    return data


def parse_trial_config(data: dict, source: str = "trial config") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_trial_config(path: str | Path) -> TrialConfig:
    """Load a trial YAML; relative ``cache``/``deepspeed`` paths are relative to the file."""
    path = Path(path)
    config = parse_trial_config(load_yaml_mapping(path), str(path))
    updates = {}
    for field in ("cache", "deepspeed"):
        value = getattr(config, field)
        if value is not None and not value.is_absolute():
            updates[field] = (path.parent / value).resolve()
    config = config.model_copy(update=updates)
    if config.deepspeed is not None:
        try:
            read_deepspeed_config(config.deepspeed)
        except ValueError as error:
            raise ConfigError(f"{path}: field 'deepspeed': {error}") from None
    return config
