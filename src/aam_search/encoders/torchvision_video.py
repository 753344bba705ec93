"""torchvision's video models as frozen encoders, under their own names.

``r3d_18``, ``r2plus1d_18``, ``mc3_18`` (ResNet-18 3D / (2+1)D / mixed convolutions), ``s3d``,
``mvit_v2_s`` and ``swin3d_t``. Tokens are the last feature map before the classifier,
``[N, C, T', H', W']``; ``pool`` as for the other encoders: ``temporal`` (default, the spatial
mean per remaining time step), ``mean`` (one token) or ``none`` (every T'xH'xW' position).
Time steps kept at 16 input frames: r3d_18, r2plus1d_18 and s3d 2 (stride 8), mc3_18 16
(only its first block is 3D), mvit_v2_s and swin3d_t 8 (stride 2).

``weights``:

- omitted: random weights from ``seed`` (tests, offline runs);
- a member of the model's torchvision weights enum (``KINETICS400_V1`` or ``DEFAULT``): read
  from torchvision's own cache (``$TORCH_HOME/hub/checkpoints``) if the published file is
  there and its hash matches, with ``torch.load(weights_only=True)``. Nothing is downloaded;
- a ``.safetensors`` file of the model's state dict.

Input size and normalisation are those of the weights' own transforms (112 px for the
ResNets, 224 px for the others; Kinetics mean/std). ``input_size`` changes the size for
the convolutional models and swin3d_t (random weights at small sizes for tests);
mvit_v2_s's position tables fix it to 224 px and 16 frames.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from .registry import EncoderError, FrozenEncoder, register_encoder
from .torchvision_compat import import_torchvision
from .weights import load_checked

POOLS = ("temporal", "mean", "none")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torchvision files: <name>-<sha256 prefix>.pth


@dataclass(frozen=True)
class VideoArch:
    weights_enum: str
    family: str  # which trunk runs the model up to its last feature map
    dim: int
    input_size: int
    fixed_input: bool = False  # position tables sized for 224 px, 16 frames


ARCHITECTURES: dict[str, VideoArch] = {
    "r3d_18": VideoArch("R3D_18_Weights", "resnet", 512, 112),
    "r2plus1d_18": VideoArch("R2Plus1D_18_Weights", "resnet", 512, 112),
    "mc3_18": VideoArch("MC3_18_Weights", "resnet", 512, 112),
    "s3d": VideoArch("S3D_Weights", "s3d", 1024, 224),
    "mvit_v2_s": VideoArch("MViT_V2_S_Weights", "mvit", 768, 224, fixed_input=True),
    "swin3d_t": VideoArch("Swin3D_T_Weights", "swin", 768, 224),
}
MVIT_FRAMES = 16


def _trunk_resnet(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.stem(x)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
    return x


def _trunk_s3d(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.features(x)


def _trunk_mvit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # MViT.forward up to its final norm, keeping every patch token instead of the class token
    x = model.conv_proj(x).flatten(2).transpose(1, 2)
    x = model.pos_encoding(x)
    thw = (model.pos_encoding.temporal_size, *model.pos_encoding.spatial_size)
    for block in model.blocks:
        x, thw = block(x, thw)
    patches = model.norm(x)[:, 1:]
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], *thw)


def _trunk_swin(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.norm(model.features(model.pos_drop(model.patch_embed(x))))  # [N, T', H', W', C]
    return x.permute(0, 4, 1, 2, 3)


TRUNKS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "resnet": _trunk_resnet,
    "s3d": _trunk_s3d,
    "mvit": _trunk_mvit,
    "swin": _trunk_swin,
}


class TorchvisionVideoTokens(nn.Module):
    """Clips ``[N, 3, T, H, W]`` -> pooled last-feature-map tokens ``[N, L, C]``."""

    def __init__(self, model: nn.Module, family: str, pool: str) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.pool = pool

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        features = TRUNKS[self.family](self.model, clips)  # [N, C, T', H', W']
        if self.pool == "temporal":
            return features.mean(dim=(3, 4)).transpose(1, 2)
        if self.pool == "mean":
            return features.mean(dim=(2, 3, 4)).unsqueeze(1)
        return features.flatten(2).transpose(1, 2)


def _torchvision_video(name: str) -> Any:
    torchvision = import_torchvision()
    if torchvision is None:
        raise EncoderError(
            f"encoder {name!r} needs torchvision matching your torch (torch 2.13.0: torchvision==0.28.0): "
            "pip install 'aam-search[torchvision]'"
        )
    import torchvision.models.video as video

    return video


def cached_weights_file(url: str) -> Path:
    """Where torchvision keeps a downloaded weights file: ``<torch hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _state_from_enum(name: str, member: Any) -> dict[str, torch.Tensor]:
    file = cached_weights_file(member.url)
    if not file.is_file():
        raise EncoderError(
            f"encoder {name!r}: weights {member} are not in torchvision's cache ({file}) and nothing is "
            f"downloaded here: fetch {member.url} on a machine with network and put it at that path "
            "(or point TORCH_HOME at a copy of the cache), or pass weights=<file.safetensors>"
        )
    expected = _HASH_IN_NAME.search(file.name)
    if expected:
        digest = hashlib.sha256()
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        if not digest.hexdigest().startswith(expected.group(1)):
            raise EncoderError(f"encoder {name!r}: {file} is damaged: its sha256 does not start with {expected.group(1)}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)  # tensors only, never arbitrary objects
    except Exception as exc:
        raise EncoderError(f"encoder {name!r}: cannot read {file}: {type(exc).__name__}: {exc}") from exc


def _state_from_file(name: str, weights: str, members: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights).expanduser()
    if path.suffix != ".safetensors":
        raise EncoderError(
            f"encoder {name!r}: option 'weights' must be one of {members} (read from torchvision's cache) "
            f"or a .safetensors file, got {weights!r}"
        )
    if not path.is_file():
        raise EncoderError(f"encoder {name!r}: weights file {path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EncoderError(f"encoder {name!r}: {path} is not a readable safetensors file: {exc}") from exc


def build_torchvision_video(
    name: str,
    weights: str | None = None,
    input_size: int | None = None,
    num_frames: int = 16,
    pool: str = "temporal",
    seed: int = 0,
) -> FrozenEncoder:
    arch = ARCHITECTURES[name]
    if pool not in POOLS:
        raise EncoderError(f"encoder {name!r}: option 'pool' must be one of {list(POOLS)}, got {pool!r}")
    for option, value in (("input_size", input_size), ("num_frames", num_frames)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise EncoderError(f"encoder {name!r}: option {option!r} must be a positive int, got {value!r}")
    size = arch.input_size if input_size is None else input_size
    if arch.fixed_input and (size, num_frames) != (arch.input_size, MVIT_FRAMES):
        raise EncoderError(f"encoder {name!r} takes exactly {MVIT_FRAMES} frames of {arch.input_size} px")
    video = _torchvision_video(name)
    enum = getattr(video, arch.weights_enum)
    members = list(enum.__members__)
    with torch.random.fork_rng(devices=[]):  # same seed, same weights; caller's RNG untouched
        torch.manual_seed(seed)
        model = getattr(video, name)()
    if weights is not None:
        if not isinstance(weights, str):
            raise EncoderError(f"encoder {name!r}: option 'weights' must be a string, got {weights!r}")
        if weights in members:
            state, source = _state_from_enum(name, enum[weights]), f"{enum[weights]}"
        else:
            state, source = _state_from_file(name, weights, members), repr(weights)
        load_checked(model, state, name, source)
    transforms = enum.DEFAULT.transforms()
    options: dict[str, Any] = {"weights": weights, "input_size": size, "num_frames": num_frames, "pool": pool, "seed": seed}
    return FrozenEncoder(
        name=name,
        options=options,
        module=TorchvisionVideoTokens(model, arch.family, pool),
        dim=arch.dim,
        input_size=size,
        num_frames=num_frames,
        mean=tuple(transforms.mean),  # type: ignore[arg-type]
        std=tuple(transforms.std),  # type: ignore[arg-type]
    )


def _register(name: str) -> None:
    def factory(
        weights: str | None = None,
        input_size: int | None = None,
        num_frames: int = 16,
        pool: str = "temporal",
        seed: int = 0,
    ) -> FrozenEncoder:
        return build_torchvision_video(name, weights, input_size, num_frames, pool, seed)

    factory.__qualname__ = f"build_{name}"
    factory.__doc__ = f"torchvision's {name} as a frozen encoder (see aam_search.encoders.torchvision_video)."
    register_encoder(name)(factory)


for _name in ARCHITECTURES:
    _register(_name)
