"""``videomae``: a Hugging Face ``transformers.VideoMAEModel`` as a frozen encoder.

Either a pretrained model (``model``: local folder or hub id) or a random one from a
config dict (``config``, seeded; for tests and offline runs). Patch tokens are pooled to
clip-level tokens: ``temporal`` keeps one token per tubelet step, as the AAM expects.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, EncoderError, FrozenEncoder, register_encoder
from .torchvision_compat import import_torchvision

POOLS = ("temporal", "mean", "none")
_NAME = "videomae"


def import_transformers(name: str) -> Any:
    """transformers for encoder ``name``, or an error that says how to install it."""
    import_torchvision()  # a torchvision that does not match torch would break transformers' import
    try:
        import transformers
    except ImportError as exc:
        raise EncoderError(
            f"encoder {name!r} needs the 'transformers' package: pip install 'aam-search[transformers]'"
        ) from exc
    return transformers


class VideoMAETokens(nn.Module):
    """Clips ``[N, 3, T, H, W]`` -> pooled VideoMAE tokens ``[N, L, D]``."""

    def __init__(self, model: nn.Module, pool: str) -> None:
        super().__init__()
        config = model.config
        self.model = model
        self.pool = pool
        self.steps = config.num_frames // config.tubelet_size
        self.dim = config.hidden_size

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        # VideoMAE takes [N, T, C, H, W]; patches come out ordered (time, row, column)
        hidden = self.model(pixel_values=clips.permute(0, 2, 1, 3, 4)).last_hidden_state
        if self.pool == "none":
            return hidden
        per_step = hidden.reshape(hidden.shape[0], self.steps, -1, self.dim)
        if self.pool == "temporal":
            return per_step.mean(dim=2)
        return per_step.mean(dim=(1, 2)).unsqueeze(1)


def _square_size(image_size: Any) -> int:
    if isinstance(image_size, (list, tuple)):
        if len(image_size) != 2 or image_size[0] != image_size[1]:
            raise EncoderError(f"encoder {_NAME!r}: only square inputs are supported, config has image_size={image_size}")
        image_size = image_size[0]
    return int(image_size)


def _processor_normalisation(transformers: Any, model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std from the model's preprocessor config, ImageNet defaults when it has none."""
    for filename in ("preprocessor_config.json", "video_preprocessor_config.json"):
        try:
            path = transformers.utils.cached_file(
                model,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except Exception:  # no processor file is normal for a bare model folder
            path = None
        if path:
            with open(path, encoding="utf-8") as handle:
                processor = json.load(handle)
            if "image_mean" in processor and "image_std" in processor:
                return tuple(processor["image_mean"]), tuple(processor["image_std"])
    return IMAGENET_MEAN, IMAGENET_STD


def _feature_config(hf_config: Any) -> dict[str, Any]:
    """The config fields that can change features (not where or with what it was saved)."""
    bookkeeping = {"transformers_version", "_name_or_path", "architectures"}
    return {k: v for k, v in hf_config.to_diff_dict().items() if k not in bookkeeping}


@register_encoder(_NAME)
def build_videomae(
    model: str | None = None,
    config: dict[str, Any] | None = None,
    pool: str = "temporal",
    seed: int = 0,
) -> FrozenEncoder:
    """A frozen VideoMAE: ``model`` (path or hub id) or ``config`` (random weights from ``seed``)."""
    if (model is None) == (config is None):
        raise EncoderError(f"encoder {_NAME!r}: give exactly one of options 'model' (path or hub id) or 'config' (dict)")
    if pool not in POOLS:
        raise EncoderError(f"encoder {_NAME!r}: option 'pool' must be one of {list(POOLS)}, got {pool!r}")
    transformers = import_transformers(_NAME)

    if model is not None:
        if not isinstance(model, str):
            raise EncoderError(f"encoder {_NAME!r}: option 'model' must be a path or hub id, got {model!r}")
        try:
            hf_model = transformers.VideoMAEModel.from_pretrained(model)
        except Exception as exc:  # missing folder, unreachable hub, wrong architecture...
            raise EncoderError(f"encoder {_NAME!r}: cannot load model {model!r}: {type(exc).__name__}: {exc}") from exc
        mean, std = _processor_normalisation(transformers, model)
    else:
        if not isinstance(config, dict):
            raise EncoderError(f"encoder {_NAME!r}: option 'config' must be a dict of VideoMAEConfig fields")
        try:
            hf_config = transformers.VideoMAEConfig(**config)
            # fork_rng: the same seed gives the same weights without touching the caller's RNG
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                hf_model = transformers.VideoMAEModel(hf_config)
        except EncoderError:
            raise
        except Exception as exc:
            raise EncoderError(f"encoder {_NAME!r}: bad option 'config': {type(exc).__name__}: {exc}") from exc
        mean, std = IMAGENET_MEAN, IMAGENET_STD

    hf_config = hf_model.config
    if hf_config.num_frames % hf_config.tubelet_size:
        raise EncoderError(
            f"encoder {_NAME!r}: num_frames={hf_config.num_frames} is not a multiple of tubelet_size={hf_config.tubelet_size}"
        )
    options: dict[str, Any] = {"pool": pool, "seed": seed}
    options.update({"model": model} if model is not None else {"config": config})
    return FrozenEncoder(
        name=_NAME,
        options=options,
        module=VideoMAETokens(hf_model, pool),
        dim=int(hf_config.hidden_size),
        input_size=_square_size(hf_config.image_size),
        # the sinusoidal position table is sized for exactly this many frames
        num_frames=int(hf_config.num_frames),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        # a loaded model's config changes features without changing options or weights
        extra_identity={"config": _feature_config(hf_config)},
    )
