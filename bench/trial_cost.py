"""Trial cost: training the AAM from the feature cache versus from decoded video.

The same adapter, objective, batches and epochs, timed two ways in one run:
  cached  - batches gather frozen-encoder tokens from the memory-mapped cache;
  video   - every epoch decodes the clips with decord and runs the frozen encoder again,
            which is what training without a cache costs.
Prints seconds per epoch for each and their ratio (the paper: 185.3 min vs 1.4 min, ~130x).

The ratio is the frozen encoder's cost (plus decoding) over the adapter's, so it depends on
the encoder: `tiny3d` is our small offline CNN; `vit-s` is VideoMAE ViT-S/16 at 112 px and
`vit-b` the paper's VideoMAE ViT-B/16 (D=768) at 224 px, both with random weights (the cost
does not depend on them).

    .venv/bin/python bench/trial_cost.py --workdir work/bench --videos 240 --epochs 3
    .venv/bin/python bench/trial_cost.py --workdir work/bench-vit --videos 96 --epochs 2 --batch-size 16 --encoder vit-s
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from aam_search.data.clips import tile_static, to_model_input
from aam_search.data.decode_pool import DecodeJob, DecodePool
from aam_search.data.manifest import read_manifest
from aam_search.encoders import build_encoder
from aam_search.features.config import EncoderConfig, ExtractConfig
from aam_search.features.extract import resolve_clip_settings
from aam_search.trainer.data import Batch, TrainingData, video_targets
from aam_search.trainer.losses import LossWeights
from aam_search.trainer.model import AdapterConfig, TaskHeads, build_adapter
from aam_search.trainer.objective import AAMObjective
from common import synthetic_cache


def _videomae(hidden: int, heads: int, size: int) -> EncoderConfig:
    config = {"hidden_size": hidden, "num_hidden_layers": 12, "num_attention_heads": heads,
              "intermediate_size": 4 * hidden, "image_size": size, "patch_size": 16, "num_frames": 16,
              "tubelet_size": 2}
    return EncoderConfig(name="videomae", options={"config": config})


ENCODERS = {
    "tiny3d": EncoderConfig(),
    "vit-s": _videomae(384, 6, 112),
    "vit-b": _videomae(768, 12, 224),  # the paper's encoder size: VideoMAE ViT-B/16, 16 x 224 x 224
}


def make_objective(dim: int, classes: int, seed: int) -> tuple[AAMObjective, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    adapter = build_adapter(dim, AdapterConfig())
    heads = TaskHeads(dim, {"action": classes})
    objective = AAMObjective(adapter, heads, None, LossWeights(), temperature=0.1)
    return objective, torch.optim.AdamW(objective.parameters(), lr=1e-4)


def step(objective: AAMObjective, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    out = objective(batch.clips, batch.static_a, batch.static_b, batch.pair_mask, batch.targets)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()


def train_cached(data: TrainingData, epochs: int, batch_size: int, classes: int) -> float:
    objective, optimizer = make_objective(data.cache.dim, classes, seed=0)
    started = time.perf_counter()
    for epoch in range(epochs):
        for batch in data.batches(batch_size, seed=0, epoch=epoch):
            step(objective, optimizer, batch)
    return (time.perf_counter() - started) / epochs


def train_from_video(
    data: TrainingData, config: ExtractConfig, epochs: int, batch_size: int, classes: int
) -> float:
    """Each epoch decodes one clip and two static frames per video and re-encodes them."""
    manifest = read_manifest(config.manifest)
    encoder = build_encoder(config.encoder.name, dict(config.encoder.options))
    settings = resolve_clip_settings(config.clips, encoder)
    objective, optimizer = make_objective(data.cache.dim, classes, seed=0)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with DecodePool(settings, workers=config.decode_workers) as pool:
        for epoch in range(epochs):
            order = np.random.default_rng([0, epoch]).permutation(data.videos)
            for start in range(0, max(1, len(order) // batch_size) * batch_size, batch_size):
                videos = order[start : start + batch_size]
                jobs = [DecodeJob(int(v), str(manifest.rows[v].path), "train", int(v)) for v in videos]
                clips, static_a, static_b = [], [], []
                for outcome in pool.imap(jobs):
                    video = outcome.video
                    clips.append(video.clips[rng.integers(len(video.clips))])
                    statics = tile_static(video.static, settings.num_frames)
                    static_a.append(statics[0])
                    static_b.append(statics[-1])
                tokens = [encoder.encode(to_model_input(np.stack(part), settings)) for part in (clips, static_a, static_b)]
                batch = Batch(tokens[0], tokens[1], tokens[2], torch.ones(len(videos), dtype=torch.bool),
                              video_targets(data.cache, videos))
                step(objective, optimizer, batch)
    return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="work/bench")
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="tiny3d")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    config, cache = synthetic_cache(workdir, args.videos, encoder=ENCODERS[args.encoder])
    data = TrainingData(cache)
    classes = len(cache.meta["action_classes"])
    cached = train_cached(data, args.epochs, args.batch_size, classes)
    video = train_from_video(data, config, args.epochs, args.batch_size, classes)
    report = {
        "encoder": args.encoder,
        "dim": data.cache.dim,
        "videos": len(data),
        "epochs": args.epochs,
        "cached_s_per_epoch": round(cached, 4),
        "video_s_per_epoch": round(video, 3),
        "ratio": round(video / cached, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
