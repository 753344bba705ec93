"""``tiny3d``: a small randomly initialised 3D CNN, built the same in every process.

It needs no download, so tests and the demo run offline. Random 3D convolutions keep
both appearance (colour, layout, background survive the 2x2 spatial grid) and motion
(temporal kernels respond to displacement between frames), which is what the privacy
attacker and the action probe need to find in the features.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, EncoderError, FrozenEncoder, register_encoder

TEMPORAL_STRIDE = 4  # two stride-2 convolutions over time
SPATIAL_STRIDE = 8  # three stride-2 convolutions over space
GRID = 2  # spatial cells kept per temporal token


class Tiny3DCNN(nn.Module):
    """Clips ``[N, 3, T, H, W]`` -> temporal tokens ``[N, T/4, dim]``."""

    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, width, kernel_size=(3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)),
            nn.ReLU(),
            nn.Conv3d(width, 2 * width, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv3d(2 * width, dim, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool3d((None, GRID, GRID))
        self.project = nn.Linear(dim * GRID * GRID, dim, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # kaiming keeps the activation scale through the ReLUs; zero biases keep the
        # features a function of the input only
        for layer in self.modules():
            if isinstance(layer, nn.Conv3d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        nn.init.normal_(self.project.weight, std=self.project.in_features**-0.5)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        grid = self.pool(self.features(clips))  # [N, dim, T/4, 2, 2]
        n, channels, steps = grid.shape[:3]
        cells = grid.permute(0, 2, 1, 3, 4).reshape(n, steps, channels * GRID * GRID)
        return self.project(cells)


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
