"""Frozen video encoders: a registry of built-ins (``tiny3d``, ``videomae``, ``vjepa2``, ``hf``,
torchvision's video models) and plug-ins."""

from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderError,
    FrozenEncoder,
    build_encoder,
    known_encoders,
    register_encoder,
)

# imported for their @register_encoder side effect; videomae imports transformers lazily
from . import tiny3d as _tiny3d  # noqa: E402,F401
from . import videomae as _videomae  # noqa: E402,F401
from . import hf as _hf, torchvision_video as _torchvision_video, vjepa2 as _vjepa2  # noqa: E402,F401

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EncoderError",
    "FrozenEncoder",
    "build_encoder",
    "known_encoders",
    "register_encoder",
]
