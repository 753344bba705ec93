"""What each encoder costs per 1,000 videos: FLOPs and cache size counted, time measured and scaled.

Every encoder is built at its published input size with random weights on the ``meta``
device (no memory, no compute) and run once under ``torch.utils.flop_counter`` to count the
FLOPs of one clip and the shape of its tokens. Then a few small encoders really run here
on the CPU, which gives this machine's throughput in GFLOP/s for convolutional and for
transformer encoders; every other encoder's time is its FLOPs divided by its family's
throughput (the largest one measured). The GPU column divides by an assumed effective throughput (``--gpu-tflops``).
Both are ESTIMATES: they leave out video decoding and assume throughput scales with FLOPs.

    PYTHONPATH=src .venv/bin/python bench/encoder_cost.py [--clips-per-video 7] [--gpu-tflops 100]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from aam_search.encoders import build_encoder

VIT_B = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
         "image_size": 224, "patch_size": 16}
# name, options at the published input size, frames per clip, family
PUBLISHED: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("tiny3d", "tiny3d", {}, 16, "cnn"),
    ("r3d_18", "r3d_18", {}, 16, "cnn"),
    ("r2plus1d_18", "r2plus1d_18", {}, 16, "cnn"),
    ("mc3_18", "mc3_18", {}, 16, "cnn"),
    ("s3d", "s3d", {}, 16, "cnn"),
    ("mvit_v2_s", "mvit_v2_s", {}, 16, "transformer"),
    ("swin3d_t", "swin3d_t", {}, 16, "transformer"),
    ("videomae (ViT-B, 16x224)", "videomae",
     {"config": {**VIT_B, "num_frames": 16, "tubelet_size": 2}}, 16, "transformer"),
    ("hf timesformer (base, 8x224)", "hf",
     {"config": {"model_type": "timesformer", **VIT_B, "num_frames": 8}}, 8, "transformer"),
    ("vjepa2 (ViT-L, 16x256)", "vjepa2",
     {"config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4.0,
                 "crop_size": 256, "patch_size": 16, "frames_per_clip": 16, "tubelet_size": 2}}, 16, "transformer"),
]
# small encoders that really run here: they give the CPU throughput of each family
MEASURED: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("tiny3d", "tiny3d", {}, 16, "cnn"),
    ("r3d_18 (112 px)", "r3d_18", {}, 16, "cnn"),
    ("videomae (hidden 384, 4 layers, 16x112)", "videomae",
     {"config": {"hidden_size": 384, "num_hidden_layers": 4, "num_attention_heads": 6, "intermediate_size": 1536,
                 "image_size": 112, "patch_size": 16, "num_frames": 16, "tubelet_size": 2}}, 16, "transformer"),
]


def count(name: str, options: dict[str, Any], frames: int) -> tuple[float, tuple[int, int]]:
    """(FLOPs of one clip, (L, D) of its tokens), on the meta device."""
    with torch.device("meta"):
        encoder = build_encoder(name, options)
        clip = torch.empty(1, 3, frames, encoder.input_size, encoder.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tokens = encoder.module(clip)
    if tokens.ndim == 2:
        tokens = tokens.unsqueeze(1)
    return float(counter.get_total_flops()), (int(tokens.shape[1]), int(tokens.shape[2]))


def seconds_per_clip(name: str, options: dict[str, Any], frames: int, batch: int, repeats: int) -> float:
    encoder = build_encoder(name, options)
    clips = torch.randn(batch, 3, frames, encoder.input_size, encoder.input_size)
    encoder.encode(clips[:1])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(clips)
    return (time.perf_counter() - started) / (repeats * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips-per-video", type=int, default=7, help="5 eval clips + 2 static clips")
    parser.add_argument("--gpu-tflops", type=float, default=100.0, help="assumed effective GPU throughput")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    measured: dict[tuple[str, str], float] = {}  # (encoder, options) -> FLOP/s
    family_rate: dict[str, tuple[float, float]] = {}  # family -> (FLOPs of the largest measured, its FLOP/s)
    print(f"measured on this CPU ({torch.get_num_threads()} threads):")
    for label, name, options, frames, family in MEASURED:
        flops, _ = count(name, options, frames)
        seconds = seconds_per_clip(name, options, frames, args.batch, args.repeats)
        measured[(name, repr(options))] = flops / seconds
        if flops > family_rate.get(family, (0.0, 0.0))[0]:
            family_rate[family] = (flops, flops / seconds)
        print(f"  {label}: {flops / 1e9:.2f} GFLOP/clip, {seconds * 1e3:.0f} ms/clip, {flops / seconds / 1e9:.1f} GFLOP/s")
    clips = 1000 * args.clips_per_video
    print(f"\nper 1,000 videos ({args.clips_per_video} clips each, fp16 tokens, pool=temporal); times are estimates")
    print("| encoder | GFLOP/clip | tokens L x D | disk | CPU hours (est.) | GPU minutes (est.) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, name, options, frames, family in PUBLISHED:
        flops, (length, dim) = count(name, options, frames)
        disk_mb = clips * length * dim * 2 / 1e6
        rate = measured.get((name, repr(options)), family_rate[family][1])  # its own, else its family's
        cpu_hours = clips * flops / rate / 3600
        gpu_minutes = clips * flops / (args.gpu_tflops * 1e12) / 60
        print(f"| {label} | {flops / 1e9:.1f} | {length} x {dim} | {disk_mb:.0f} MB | {cpu_hours:.2f} | {gpu_minutes:.2f} |")


if __name__ == "__main__":
    main()
