"""``hf``: any ``transformers`` video model (``AutoModel``) as a frozen encoder.

``model`` is a local folder (``config.json`` + ``model.safetensors``) or a hub id already in
the local Hugging Face cache; ``config`` (a dict with ``model_type``) builds random weights
from ``seed`` instead, for tests and offline runs. Weights load from safetensors only
(``use_safetensors=True``, never a pickled ``.bin``) and no remote code runs.

Tokens come from the model's ``last_hidden_state``. ``pool``:

- ``temporal`` (default): one token per time step (the mean over its spatial patches). The
  patch layout is known for the model types in `TOKEN_LAYOUTS` (VideoMAE, TimeSformer, ViViT,
  V-JEPA 2); other models need ``mean`` or ``none``;
- ``mean``: one token, the mean over all patch tokens;
- ``none``: every token of the last hidden state, as the model returns them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, EncoderError, FrozenEncoder, register_encoder
from .weights import describe_keys
from .videomae import _feature_config, _processor_normalisation, _square_size, import_transformers

POOLS = ("temporal", "mean", "none")
_NAME = "hf"


@dataclass(frozen=True)
class TokenLayout:
    """How a model lays out ``last_hidden_state``: a leading [CLS] token, then patches in time-major
    (``t, h, w``) or space-major (``h, w, t``) order, with ``tubelet`` frames per time step."""

    cls_token: bool
    time_major: bool
    frames_field: str = "num_frames"
    size_field: str = "image_size"
    tubelet_field: str | None = "tubelet_size"


TOKEN_LAYOUTS: dict[str, TokenLayout] = {
    "videomae": TokenLayout(cls_token=False, time_major=True),
    "timesformer": TokenLayout(cls_token=True, time_major=False, tubelet_field=None),
    "vivit": TokenLayout(cls_token=True, time_major=True),
    "vjepa2": TokenLayout(cls_token=False, time_major=True, frames_field="frames_per_clip", size_field="crop_size"),
}


class HFVideoTokens(nn.Module):
    """Clips ``[N, 3, T, H, W]`` -> pooled last-hidden-state tokens ``[N, L, D]``."""

    def __init__(self, model: nn.Module, pool: str, layout: TokenLayout | None, steps: int | None) -> None:
        super().__init__()
        self.model = model
        self.pool = pool
        self.layout = layout
        self.steps = steps
        params = inspect.signature(model.forward).parameters
        self.input_name = "pixel_values_videos" if "pixel_values_videos" in params else "pixel_values"
        self.extra = {"skip_predictor": True} if "skip_predictor" in params else {}  # V-JEPA 2: encoder only

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        # transformers video models take [N, T, C, H, W]
        inputs = {self.input_name: clips.permute(0, 2, 1, 3, 4), **self.extra}
        hidden = self.model(**inputs).last_hidden_state
        if self.pool == "none":
            return hidden
        if self.layout is not None and self.layout.cls_token:
            hidden = hidden[:, 1:]
        if self.pool == "mean" or self.layout is None or self.steps is None:
            return hidden.mean(dim=1, keepdim=True)
        n, length, dim = hidden.shape
        if self.layout.time_major:
            return hidden.reshape(n, self.steps, length // self.steps, dim).mean(dim=2)
        return hidden.reshape(n, length // self.steps, self.steps, dim).mean(dim=1)


def _config_value(config: Any, field: str | None, default: Any = None) -> Any:
    value = getattr(config, field, default) if field else default
    if isinstance(value, (list, tuple)):  # ViViT: tubelet_size [t, h, w]
        value = value[0]
    return value


def load_pretrained(model_class: Any, model: str, name: str) -> nn.Module:
    """``model_class.from_pretrained`` from safetensors, with errors a user can act on."""
    if not isinstance(model, str) or not model:
        raise EncoderError(f"encoder {name!r}: option 'model' must be a local folder or hub id, got {model!r}")
    local = Path(model).expanduser()
    try:
        loaded, info = model_class.from_pretrained(
            str(local) if local.exists() else model,
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
        )
    except OSError as exc:
        if local.exists():
            raise EncoderError(f"encoder {name!r}: cannot load model folder {model!r}: {exc}") from exc
        raise EncoderError(
            f"encoder {name!r}: {model!r} is neither a local folder nor in the Hugging Face cache, and nothing "
            "can be downloaded here (offline, or no such hub id). On a machine with network run "
            f"`hf download {model} --local-dir DIR`, copy DIR here and pass model=DIR "
            "(a folder with config.json and model.safetensors)"
        ) from exc
    except Exception as exc:  # size mismatches, bad config...
        raise EncoderError(f"encoder {name!r}: cannot load model {model!r}: {type(exc).__name__}: {exc}") from exc
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(item[0]) if isinstance(item, (list, tuple)) else str(item) for item in info.get("mismatched_keys") or []]
    if missing or mismatched:
        unexpected = list(info.get("unexpected_keys") or [])
        raise EncoderError(
            f"encoder {name!r}: the weights in {model!r} do not fit {type(loaded).__name__}: "
            f"{describe_keys(missing, unexpected, mismatched)}"
        )
    return loaded


def build_hf_encoder(
    name: str,
    model_class: Callable[[Any], Any],
    random_model: Callable[[Any, dict[str, Any]], nn.Module],
    model: str | None,
    config: dict[str, Any] | None,
    pool: str,
    seed: int,
) -> FrozenEncoder:
    """The shared builder of ``hf`` and ``vjepa2``: a loaded or a seeded random model, wrapped.

    ``model_class(transformers)`` is the class whose ``from_pretrained`` loads ``model``;
    ``random_model(transformers, config)`` builds random weights from the ``config`` dict.
    """
    if (model is None) == (config is None):
        raise EncoderError(f"encoder {name!r}: give exactly one of options 'model' (path or hub id) or 'config' (dict)")
    if pool not in POOLS:
        raise EncoderError(f"encoder {name!r}: option 'pool' must be one of {list(POOLS)}, got {pool!r}")
    transformers = import_transformers(name)
    if model is not None:
        hf_model = load_pretrained(model_class(transformers), model, name)
        mean, std = _processor_normalisation(transformers, model)
    else:
        if not isinstance(config, dict):
            raise EncoderError(f"encoder {name!r}: option 'config' must be a dict of config fields")
        try:
            with torch.random.fork_rng(devices=[]):  # same seed, same weights; caller's RNG untouched
                torch.manual_seed(seed)
                hf_model = random_model(transformers, config)
        except EncoderError:
            raise
        except Exception as exc:
            raise EncoderError(f"encoder {name!r}: bad option 'config': {type(exc).__name__}: {exc}") from exc
        mean, std = IMAGENET_MEAN, IMAGENET_STD

    hf_config = hf_model.config
    layout = TOKEN_LAYOUTS.get(getattr(hf_config, "model_type", ""))
    if pool == "temporal" and layout is None:
        raise EncoderError(
            f"encoder {name!r}: pool='temporal' needs the token layout of the model, known for "
            f"{', '.join(TOKEN_LAYOUTS)}; this is {hf_config.model_type!r}: use pool='mean' or 'none'"
        )
    frames = _config_value(hf_config, layout.frames_field if layout else "num_frames")
    size = _config_value(hf_config, layout.size_field if layout else "image_size")
    if frames is None or size is None:
        raise EncoderError(f"encoder {name!r}: the config of {hf_config.model_type!r} names no frame count or image size")
    tubelet = int(_config_value(hf_config, layout.tubelet_field if layout else None, 1) or 1)
    if frames % tubelet:
        raise EncoderError(f"encoder {name!r}: {frames} frames is not a multiple of the tubelet size {tubelet}")
    options: dict[str, Any] = {"pool": pool, "seed": seed}
    options.update({"model": model} if model is not None else {"config": config})
    return FrozenEncoder(
        name=name,
        options=options,
        module=HFVideoTokens(hf_model, pool, layout, int(frames) // tubelet),
        dim=int(hf_config.hidden_size),
        input_size=_square_size(size),
        num_frames=int(frames),  # position embeddings are sized for exactly this many frames
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        extra_identity={"config": _feature_config(hf_config)},
    )


def _random_auto_model(transformers: Any, config: dict[str, Any]) -> nn.Module:
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise EncoderError(f"encoder {_NAME!r}: option 'config' needs a 'model_type' (e.g. 'timesformer', 'videomae')")
    return transformers.AutoModel.from_config(transformers.AutoConfig.for_model(model_type, **fields))


@register_encoder(_NAME)
def build_hf(
    model: str | None = None,
    config: dict[str, Any] | None = None,
    pool: str = "temporal",
    seed: int = 0,
) -> FrozenEncoder:
    """Any transformers video model: ``model`` (folder or cached hub id) or ``config`` (with ``model_type``)."""
    return build_hf_encoder(_NAME, lambda t: t.AutoModel, _random_auto_model, model, config, pool, seed)
