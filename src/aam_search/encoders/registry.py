"""The frozen encoder registry: built-in encoders by name, user plug-ins by dotted path.

An encoder is built once per feature extraction and never trained, so everything here
is about wrapping a module into a :class:`FrozenEncoder` with a fixed input contract
and a weight fingerprint that the feature cache can key on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import nn

from aam_search.errors import AamSearchError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

EncoderFactory = Callable[..., "FrozenEncoder"]

_REGISTRY: dict[str, EncoderFactory] = {}


class EncoderError(AamSearchError, ValueError):
    """An encoder cannot be built or used: unknown name, bad plug-in, bad option, bad input."""


def _as_rgb_triple(value: Any, what: str, encoder_name: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise EncoderError(f"encoder {encoder_name!r}: {what} must be 3 numbers, got {value!r}") from exc
    if len(triple) != 3:
        raise EncoderError(f"encoder {encoder_name!r}: {what} must be 3 numbers, got {value!r}")
    return triple  # type: ignore[return-value]


@dataclass
class FrozenEncoder:
    """A frozen video encoder: float clips ``[N, 3, T, H, W]`` in, tokens ``[N, L, D]`` out.

    Clips are expected already normalised with ``mean``/``std`` (see :meth:`normalize`).
    """

    name: str
    options: dict[str, Any]
    module: nn.Module
    dim: int
    input_size: int
    num_frames: int | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # JSON-serialisable facts that change features but live in neither options nor
    # weights (e.g. a loaded model's config); hashed into the fingerprint.
    extra_identity: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise EncoderError(f"encoder {self.name!r}: module must be a torch.nn.Module, got {type(self.module).__name__}")
        for attr in ("dim", "input_size"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise EncoderError(f"encoder {self.name!r}: {attr} must be a positive int, got {value!r}")
        if self.num_frames is not None and (
            isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames <= 0
        ):
            raise EncoderError(f"encoder {self.name!r}: num_frames must be a positive int or None, got {self.num_frames!r}")
        self.mean = _as_rgb_triple(self.mean, "mean", self.name)
        self.std = _as_rgb_triple(self.std, "std", self.name)
        self.options = dict(self.options)
        self.module.eval()
        self.module.requires_grad_(False)

    def expected_shape(self) -> str:
        frames = "T" if self.num_frames is None else str(self.num_frames)
        return f"[N, 3, {frames}, {self.input_size}, {self.input_size}]"

    def _check_clips(self, clips: torch.Tensor) -> None:
        if not isinstance(clips, torch.Tensor):
            raise EncoderError(f"encoder {self.name!r} expects a tensor {self.expected_shape()}, got {type(clips).__name__}")
        got = list(clips.shape)
        ok = (
            clips.ndim == 5
            and got[1] == 3
            and got[3] == self.input_size
            and got[4] == self.input_size
            and (self.num_frames is None or got[2] == self.num_frames)
        )
        if not ok:
            raise EncoderError(f"encoder {self.name!r} expects clips {self.expected_shape()}, got {got}")
        if not clips.is_floating_point():
            raise EncoderError(f"encoder {self.name!r} expects float clips, got dtype {clips.dtype}")

    def normalize(self, clips: torch.Tensor) -> torch.Tensor:
        """Map clips with values in [0, 1] to the normalisation this encoder expects."""
        mean = torch.tensor(self.mean, dtype=clips.dtype, device=clips.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(self.std, dtype=clips.dtype, device=clips.device).view(1, 3, 1, 1, 1)
        return (clips - mean) / std

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised float clips ``[N, 3, T, H, W]`` -> float32 tokens ``[N, L, D]``."""
        self._check_clips(clips)
        if self.module.training:  # someone called .train(): dropout/BN must stay frozen
            self.module.eval()
        first = next(self.module.parameters(), None)
        if first is not None:
            clips = clips.to(device=first.device, dtype=first.dtype)
        tokens = self.module(clips)
        if not isinstance(tokens, torch.Tensor):
            raise EncoderError(f"encoder {self.name!r} returned {type(tokens).__name__}, expected a tensor [N, L, {self.dim}]")
        if tokens.ndim == 2:  # a pooled clip embedding: one token
            tokens = tokens.unsqueeze(1)
        if tokens.ndim != 3 or tokens.shape[0] != clips.shape[0] or tokens.shape[2] != self.dim:
            raise EncoderError(
                f"encoder {self.name!r} returned shape {list(tokens.shape)}, expected [{clips.shape[0]}, L, {self.dim}]"
            )
        return tokens.float()

    def fingerprint(self) -> str:
        """sha256 over name, options, declared shapes/normalisation and every parameter and buffer."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            header = {
                "name": self.name,
                "options": self.options,
                "dim": self.dim,
                "input_size": self.input_size,
                "num_frames": self.num_frames,
                "mean": list(self.mean),
                "std": list(self.std),
                "extra": self.extra_identity,
            }
            digest.update(json.dumps(header, sort_keys=True, default=str).encode())
            tensors = [("param:" + n, t) for n, t in self.module.named_parameters()]
            tensors += [("buffer:" + n, t) for n, t in self.module.named_buffers()]
            for tensor_name, tensor in sorted(tensors, key=lambda item: item[0]):
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{tensor_name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
                # view as bytes so every dtype (bfloat16, bool, ...) hashes without conversion
                digest.update(flat.view(torch.uint8).numpy())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        """What the feature cache records about the encoder."""
        return {
            "name": self.name,
            "options": dict(self.options),
            "dim": self.dim,
            "input_size": self.input_size,
            "num_frames": self.num_frames,
            "fingerprint": self.fingerprint(),
        }


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering ``factory(**options) -> FrozenEncoder`` under ``name``."""
    if not name or ":" in name:
        raise EncoderError(f"encoder name must be non-empty and contain no ':', got {name!r}")

    def decorate(factory: EncoderFactory) -> EncoderFactory:
        previous = _REGISTRY.get(name)
        same = previous is not None and (
            getattr(previous, "__module__", None),
            getattr(previous, "__qualname__", None),
        ) == (getattr(factory, "__module__", None), getattr(factory, "__qualname__", None))
        if previous is not None and not same:  # re-importing the same module is fine
            raise EncoderError(f"encoder {name!r} is already registered by {previous!r}")
        _REGISTRY[name] = factory
        return factory

    return decorate


def known_encoders() -> list[str]:
    return sorted(_REGISTRY)


def is_plugin(name: str) -> bool:
    """A ``package.module:factory`` path (code to import and run), not a built-in name."""
    return name not in _REGISTRY and ":" in name


def require_allowed_encoder(name: str, allowed: Iterable[str], *, source: str, hint: str = "") -> None:
    """Refuse to build encoder ``name`` from a config this process did not write itself.

    Built-ins are resolved by name from the registry and always allowed. A plug-in is an
    import and a call of whatever the path names (``subprocess:run`` included), so it is
    allowed only when it is in ``allowed``, which the local user gives (e.g. ``aam-search
    worker --allow-plugin module:factory``). ``hint`` may use ``{name}``.
    """
    if name in _REGISTRY:
        return
    if not is_plugin(name):
        raise EncoderError(f"{source}: unknown encoder {name!r}; known encoders: {', '.join(known_encoders())}")
    if name in set(allowed):
        return
    advice = f"; {hint.format(name=name)}" if hint else ""
    raise EncoderError(
        f"{source}: encoder {name!r} is a plug-in (code that would be imported and called), not a built-in "
        f"({', '.join(known_encoders())}), and this process was not told to trust it{advice}"
    )


def _load_dotted(path: str) -> Callable[..., Any]:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise EncoderError(f"bad encoder path {path!r}: expected 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise EncoderError(f"encoder {path!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise EncoderError(f"encoder {path!r}: module {module_name!r} has no attribute {attr_path!r}") from exc
    if not callable(target):
        raise EncoderError(f"encoder {path!r}: {attr_path!r} is not callable")
    return target


def _check_option_names(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind(**options)
    except TypeError as exc:
        accepted = [p.name for p in signature.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = [k for k in options if k not in accepted]
        detail = f"unknown option(s) {unknown}" if unknown else str(exc)
        raise EncoderError(f"encoder {name!r}: {detail}; accepted options: {accepted}") from exc


def _wrap_plain_module(name: str, options: dict[str, Any], module: nn.Module) -> FrozenEncoder:
    for attr in ("dim", "input_size"):
        if not hasattr(module, attr):
            raise EncoderError(
                f"encoder {name!r} returned a {type(module).__name__} without attribute {attr!r}; "
                "a plug-in module must expose 'dim' and 'input_size' (optional: num_frames, mean, std)"
            )
    return FrozenEncoder(
        name=name,
        options=options,
        module=module,
        dim=module.dim,
        input_size=module.input_size,
        num_frames=getattr(module, "num_frames", None),
        mean=getattr(module, "mean", IMAGENET_MEAN),
        std=getattr(module, "std", IMAGENET_STD),
    )


def build_encoder(name: str, options: dict[str, Any] | None = None) -> FrozenEncoder:
    """Build a frozen encoder from a registry name or a ``package.module:factory`` path."""
    options = dict(options or {})
    try:
        json.dumps(options, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise EncoderError(f"encoder {name!r}: options must be JSON-serialisable: {exc}") from exc

    if name in _REGISTRY:
        factory: Callable[..., Any] = _REGISTRY[name]
    elif ":" in name:
        factory = _load_dotted(name)
    else:
        raise EncoderError(
            f"unknown encoder {name!r}; known encoders: {', '.join(known_encoders())} "
            "(or give a plug-in as 'package.module:factory')"
        )

    _check_option_names(name, factory, options)
    try:
        built = factory(**options)
    except EncoderError:
        raise
    except Exception as exc:  # a plug-in's own failure: report it against the encoder
        raise EncoderError(f"encoder {name!r} failed to build: {type(exc).__name__}: {exc}") from exc

    if isinstance(built, FrozenEncoder):
        # the caller's name and options are what the cache key and metadata must show
        return dataclasses.replace(built, name=name, options=options)
    if isinstance(built, nn.Module):
        return _wrap_plain_module(name, options, built)
    raise EncoderError(
        f"encoder {name!r}: factory returned {type(built).__name__}, expected a FrozenEncoder or torch.nn.Module"
    )
