"""``tiny3d``: a small randomly initialised 3D CNN, built the same in every process.

It needs no download, so tests and the demo run offline. Random weights still give useful
features if the architecture does not throw the evidence away:

- The input is RGB plus its temporal difference (frame t minus frame t-1, zero for the
  first frame), a fixed temporal-gradient channel. Random 3D kernels over (RGB, difference)
  are oriented in space-time, so their rectified responses see where and in which direction
  things move; on a static clip the difference is zero, so motion features stay silent.
- Each token is a hypercolumn: the spatial MAXIMUM of every layer's channels (early layers
  keep colour and fine texture, the last one larger shapes), averaged over the frames of
  the token. Max pooling keeps a small actor's colour, clothing and motion, which global
  averaging dilutes with the background.

Channels: ``width`` (conv 1), ``2 * width`` (conv 2) and ``dim - 3 * width`` (conv 3), so
the concatenated token has exactly ``dim`` features and needs no random projection.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, EncoderError, FrozenEncoder, register_encoder

TEMPORAL_STRIDE = 4  # two stride-2 convolutions over time
SPATIAL_STRIDE = 8  # three stride-2 convolutions over space
INPUT_CHANNELS = 6  # RGB and its temporal difference


class Tiny3DCNN(nn.Module):
    """Clips ``[N, 3, T, H, W]`` -> temporal tokens ``[N, T/4, dim]``."""

    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()
        last = dim - 3 * width
        if last <= 0:
            raise ValueError(f"dim ({dim}) must be greater than 3 * width ({3 * width})")
        self.features = nn.Sequential(
            nn.Conv3d(INPUT_CHANNELS, width, kernel_size=(3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)),
            nn.ReLU(),
            nn.Conv3d(width, 2 * width, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv3d(2 * width, last, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # kaiming keeps the activation scale through the ReLUs; zero biases keep the
        # features a function of the input only
        for layer in self.modules():
            if isinstance(layer, nn.Conv3d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        steps = clips.shape[2] // TEMPORAL_STRIDE
        difference = torch.diff(clips, dim=2, prepend=clips[:, :, :1])
        hidden = torch.cat([clips, difference], dim=1)
        pooled = []
        for layer in self.features:
            hidden = layer(hidden)
            if isinstance(layer, nn.ReLU):
                # [N, C, T', H', W'] -> spatial max -> mean over the frames of each token
                peak = hidden.amax(dim=(3, 4))
                pooled.append(nn.functional.adaptive_avg_pool1d(peak, steps))
        return torch.cat(pooled, dim=1).transpose(1, 2).contiguous()


def _positive_int(value: object, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EncoderError(f"encoder 'tiny3d': option {option!r} must be a positive int, got {value!r}")
    return value


@register_encoder("tiny3d")
def build_tiny3d(
    dim: int = 128, width: int = 32, input_size: int = 64, num_frames: int = 16, seed: int = 0
) -> FrozenEncoder:
    """The built-in offline encoder; same options give bit-identical weights anywhere."""
    dim = _positive_int(dim, "dim")
    width = _positive_int(width, "width")
    input_size = _positive_int(input_size, "input_size")
    num_frames = _positive_int(num_frames, "num_frames")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EncoderError(f"encoder 'tiny3d': option 'seed' must be an int, got {seed!r}")
    if dim <= 3 * width:
        raise EncoderError(
            f"encoder 'tiny3d': option 'dim' must be greater than 3 * width = {3 * width} "
            f"(the last layer gets dim - 3 * width channels), got dim={dim}, width={width}"
        )
    if input_size % SPATIAL_STRIDE:
        raise EncoderError(f"encoder 'tiny3d': option 'input_size' must be a multiple of {SPATIAL_STRIDE}, got {input_size}")
    if num_frames % TEMPORAL_STRIDE:
        raise EncoderError(
            f"encoder 'tiny3d': option 'num_frames' must be a multiple of {TEMPORAL_STRIDE}, got {num_frames}"
        )
    # fork_rng: seeding here must not disturb the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = Tiny3DCNN(dim=dim, width=width)
    options = {"dim": dim, "width": width, "input_size": input_size, "num_frames": num_frames, "seed": seed}
    return FrozenEncoder(
        name="tiny3d",
        options=options,
        module=module,
        dim=dim,
        input_size=input_size,
        num_frames=num_frames,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
