"""The feature-extraction config: what to encode, with which encoder, and where to cache it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aam_search.errors import AamSearchError
from aam_search.yamlio import load_yaml


class ConfigError(AamSearchError, ValueError):
    """A config file or value that cannot be used; the message names the file and field."""


# Configs are strict (``epochs: true`` is not 1, ``seed: "3"`` is not 3); floats still take
# ints, and paths and tuples take the strings and lists YAML gives (``strict=False``).
STRICT = ConfigDict(extra="forbid", strict=True)
# numpy's legacy seeding (Accelerate's ``set_seed``) takes 0 .. 2**32 - 1.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed, 0 .. 2**32 - 1")]


class EncoderConfig(BaseModel):
    model_config = ConfigDict(**STRICT, frozen=True)

    name: str = "tiny3d"
    options: dict[str, Any] = Field(default_factory=dict)


class ClipConfig(BaseModel):
    """Clip sampling a user may choose. Frame size and normalisation come from the encoder."""

    model_config = ConfigDict(**STRICT, frozen=True)

    num_frames: int | None = Field(default=None, ge=1, description="T; default: the encoder's")
    stride: int = Field(default=2, ge=1)
    train_clips: int | None = Field(default=None, ge=1, description="None: all non-overlapping")
    eval_clips: int = Field(default=5, ge=1)
    static_clips: int = Field(default=2, ge=1)


class ExtractConfig(BaseModel):
    model_config = STRICT

    manifest: Path = Field(strict=False)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    clips: ClipConfig = Field(default_factory=ClipConfig)
    cache_root: Path = Field(default=Path("work/cache"), strict=False)
    batch_size: int = Field(default=32, ge=1, description="clips per encoder forward pass")
    shard_videos: int = Field(default=64, ge=1, description="videos per resumable shard")
    decode_workers: int = Field(default=2, ge=1)
    decode_threads: int = Field(default=1, ge=1, description="decord threads per worker")
    decode_timeout_s: float = Field(default=60.0, gt=0)
    strict: bool = False
    seed: Seed = 0

    @field_validator("manifest", "cache_root")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted field path."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"]
        if problem["type"] == "value_error":  # our own validators' text, without pydantic's prefix
            message = str(problem.get("ctx", {}).get("error", message.removeprefix("Value error, ")))
        head = f"{source}: field '{field}': " if field else f"{source}: "
        lines += [head + line for line in message.splitlines()]
    return "\n".join(lines)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    return data


def load_extract_config(path: str | Path, **overrides: Any) -> ExtractConfig:
    """Load an extraction config; relative paths in it are relative to the file's folder."""
    path = Path(path)
    data = load_yaml_mapping(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = ExtractConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, str(path))) from None
    base = path.parent
    updates = {}
    for field in ("manifest", "cache_root"):
        value = getattr(config, field)
        if not value.is_absolute() and field not in overrides:
            updates[field] = base / value
    return config.model_copy(update=updates)
