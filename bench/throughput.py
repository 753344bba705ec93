"""Throughput: how many trials an accelerator (or this CPU) finishes per hour, four ways.

  (a) the physical limit: a sync-free AAM training step on device-resident tensors (fused
      AdamW, one sync at the end), and the adapter step's GEMM TFLOP/s;
  (b) one trial at a time, as the orchestrator runs trials today (a study, stack 1);
  (c) concurrent trial processes on one device: 2 and 4 (``max_parallel`` on CPU; on one GPU
      the same processes share it);
  (d) stacked trials, K = 1, 2, 4, 8, 16, 32: the stacked step's time and peak memory, then
      trials per hour and seconds per trial with evaluation included (training from the
      stacked step, evaluation and set-up from the measured single trial); and a real
      stacked study, whose wall time against (b) is ``stacked_speedup``.
  (e) the launch floor: one trial's step and the stacked step (K = 1 and 8) at shapes with
      next to no arithmetic (D=16, batch 4, L=2), so the time is the host's (Python, dispatch,
      kernel launches): what a GPU's step cannot go under however fast its kernels are.

Features are random tensors of the right shapes in a real cache folder, so no dataset is
needed: paper scale is an HMDB51-like cache (3.2k train videos, L=8, D=768, batch 512, a
3-layer 8-head adapter, 100 epochs, the full default evaluation). ``--smoke`` runs the same
comparison, every arm for real (real studies through the orchestrator: one at a time,
``max_parallel`` 2, and stacked), on the demo's cache shapes and trial (240 videos, L=4,
D=128, batch 64, lr 1e-3, the default 3-layer 8-head adapter, all four attackers on both
protocols), and scales down only what a smoke may, the same for every arm: 60 steps per trial
(the demo: 500), attackers and probes 20 epochs (60), 2 cross-fit folds (5), 100 bootstrap
draws (1000), K = 1, 2, 4 (1 ... 32), and fewer timed steps in (a) and (d). It fits in about
3 minutes on one core of a 2-core CPU. The task heads are pre-trained into the cache before
the first study, so no arm pays for them (a study does it once either way). The last line is
``key=value`` pairs.

    .venv/bin/python bench/throughput.py --smoke --workdir work/bench-throughput
    .venv/bin/python bench/throughput.py --workdir work/bench-throughput   # on a GPU
    .venv/bin/python bench/throughput.py --smoke --steps-only --stacks 1,4   # step timings only, ~20 s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from aam_search.features.cache import CACHE_FORMAT_VERSION, FEATURES_FILE, LABELS_FILE, META_FILE, FeatureCache
from aam_search.features.cache import file_records, write_json_atomic
from aam_search.search.config import StudyConfig
from aam_search.search.orchestrator import Orchestrator
from aam_search.trainer.config import TrialConfig
from aam_search.trainer.baseline import cotrained_tasks
from aam_search.trainer.data import TrainingData
from aam_search.trainer.head_cache import pretrained_heads
from aam_search.trainer.losses import LossWeights
from aam_search.trainer.model import TaskHeads, build_adapter, count_parameters
from aam_search.trainer.objective import AAMObjective
from aam_search.trainer.stack import StackedAAM, member_bytes

SCALES = {
    # videos (60% train), tokens, dim, actions, trial settings
    "paper": dict(videos=5300, tokens=8, dim=768, actions=51,
                  trial={"optim": {"epochs": 100, "batch_size": 512, "min_steps": 0, "lr": 1e-3}}),
    # the demo's shapes and trial, scaled down as the module docstring says (the demo: 50
    # epochs raised to 500 steps, the default evaluation)
    "demo": dict(videos=240, tokens=4, dim=128, actions=6,
                 trial={"optim": {"epochs": 30, "min_steps": 0, "batch_size": 64, "lr": 1e-3},
                        "eval": {"primary_protocol": "static", "attacker_epochs": 20, "probe_epochs": 20,
                                 "crossfit_folds": 2, "bootstrap_resamples": 100}}),
}
# Timed steps after the warm-up ones: a fresh process's first steps run 2-4x slower (kernel and
# allocator warm-up), so a short loop timed from the second step overstates the step.
WARMUP_STEPS = 3
ATTRS = 4
CLIPS, STATICS = 4, 3  # per video


def random_cache(path: Path, videos: int, tokens: int, dim: int, actions: int, seed: int = 0) -> FeatureCache:
    """A complete feature cache of random tokens and labels, in the layout extraction writes."""
    if (path / META_FILE).is_file():
        return FeatureCache.open(path)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    split = torch.tensor(np.random.default_rng(seed).choice([0, 1, 2], size=videos, p=[0.6, 0.2, 0.2]), dtype=torch.int8)
    labels = {
        "split": split, "action": torch.randint(0, actions, (videos,), generator=g),
        "attrs": torch.randint(0, 2, (videos, ATTRS), generator=g).to(torch.int8),
        "tasks": torch.zeros((videos, 0), dtype=torch.int64), "groups": torch.zeros((videos, 0), dtype=torch.int64),
        "valid": torch.ones(videos, dtype=torch.bool), "is_image": torch.zeros(videos, dtype=torch.bool),
    }
    save_file(labels, str(path / LABELS_FILE))
    features = {
        "clip_features": torch.randn(videos * CLIPS, tokens, dim, generator=g).half(),
        "clip_video": torch.arange(videos).repeat_interleave(CLIPS),
        "static_features": torch.randn(videos * STATICS, tokens, dim, generator=g).half(),
        "static_video": torch.arange(videos).repeat_interleave(STATICS),
    }
    save_file(features, str(path / FEATURES_FILE))
    meta = {
        "version": CACHE_FORMAT_VERSION, "key": f"random-{videos}-{tokens}-{dim}", "status": "complete",
        "manifest": {"file": "random", "sha256": ""}, "encoder": {"name": "random", "dim": dim}, "clips": {},
        "num_shards": 1, "shard_videos": videos, "videos": [f"v{i:05d}.mp4" for i in range(videos)],
        "rows": list(range(videos)), "action_classes": [f"a{i}" for i in range(actions)],
        "attr_names": [f"attr{i}" for i in range(ATTRS)], "task_names": [], "task_classes": {},
        "group_names": [], "group_values": {}, "skipped": [], "feature_shape": [tokens, dim],
        "counts": {"videos": videos, "decoded": videos, "skipped": 0, "clips": videos * CLIPS,
                   "static_clips": videos * STATICS},
    }
    meta["files"] = file_records(path)
    write_json_atomic(path / META_FILE, meta)
    return FeatureCache.open(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_batch(config: TrialConfig, cache: FeatureCache, device: torch.device) -> dict[str, Any]:
    batch = config.optim.batch_size
    shape = (batch, cache.tokens, cache.dim)
    return {"clips": torch.randn(shape, device=device), "static_a": torch.randn(shape, device=device),
            "static_b": torch.randn(shape, device=device), "pair_mask": torch.ones(batch, dtype=torch.bool, device=device),
            "targets": {"action": torch.randint(0, len(cache.meta["action_classes"]), (batch,), device=device)}}


def _objective(config: TrialConfig, cache: FeatureCache, device: torch.device) -> AAMObjective:
    return AAMObjective(build_adapter(cache.dim, config.adapter), TaskHeads(cache.dim, {"action": len(cache.meta["action_classes"])}),
                        None, LossWeights(), config.loss.temperature).to(device)


def adapter_flops(config: TrialConfig, cache: FeatureCache) -> float:
    """Forward + backward GEMM FLOPs of one step: 3 views x batch x L tokens through the adapter."""
    rows, dim, length = 3 * config.optim.batch_size * cache.tokens, cache.dim, cache.tokens
    hidden = round(dim * config.adapter.ffn_mult)
    per_row = 2 * (4 * dim * dim + 2 * dim * hidden) + 2 * 2 * length * dim  # projections, FFN, attention
    return 3.0 * rows * per_row * config.adapter.layers


def physical_limit(config: TrialConfig, cache: FeatureCache, device: torch.device, steps: int) -> dict[str, float]:
    """(a) one trial's step on resident tensors, no host sync until the end."""
    objective = _objective(config, cache, device)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3, fused=device.type in ("cuda", "cpu"))
    batch = _random_batch(config, cache, device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = objective(batch["clips"], batch["static_a"], batch["static_b"], batch["pair_mask"], batch["targets"])
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - started) / steps
    return {"step_ms": seconds * 1e3, "tflops": adapter_flops(config, cache) / seconds / 1e12}


def stacked_step(config: TrialConfig, cache: FeatureCache, device: torch.device, k: int, steps: int) -> dict[str, float]:
    """(d) the stacked step of K members: seconds per step and peak memory."""
    configs = [config.model_copy(update={"seed": i}) for i in range(k)]
    stacked = StackedAAM([_objective(c, cache, device) for c in configs], configs)
    batch = _random_batch(config, cache, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for _ in range(WARMUP_STEPS):
            stacked.step(batch, [1e-3] * k, batched=False)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            stacked.step(batch, [1e-3] * k, batched=False)
        _sync(device)
    seconds = (time.perf_counter() - started) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # no allocator statistics on CPU: the estimate the stack is capped with
        peak = k * member_bytes(config, cache.dim, cache.tokens, count_parameters(_objective(config, cache, device)))
    return {"step_s": seconds, "peak_mib": peak / 2**20}


# (e): shapes at which a step does next to no arithmetic, so its time is the host's: Python,
# dispatch and kernel launches, the floor a fast GPU's step cannot go under.
FLOOR = dict(videos=60, tokens=2, dim=16, actions=3, batch=4, k=8, steps=50)


def launch_floor(workdir: Path, device: torch.device) -> dict[str, float]:
    """(e) one trial's step and the stacked step (K = 1 and ``FLOOR['k']``) at ``FLOOR`` shapes."""
    cache = random_cache(workdir / "cache-floor", FLOOR["videos"], FLOOR["tokens"], FLOOR["dim"], FLOOR["actions"])
    config = TrialConfig.model_validate({"cache": str(cache.path), "optim": {"batch_size": FLOOR["batch"]}})
    out = {"floor_step_ms": round(physical_limit(config, cache, device, FLOOR["steps"])["step_ms"], 2)}
    for k in (1, FLOOR["k"]):
        out[f"floor_stacked_ms_k{k}"] = round(stacked_step(config, cache, device, k, FLOOR["steps"])["step_s"] * 1e3, 2)
    return out


def warm_heads(config: TrialConfig, cache: FeatureCache) -> str:
    """The study's task heads pre-trained into the cache once, before any arm is timed."""
    heads = TaskHeads(cache.dim, cotrained_tasks(cache, config.eval.unseen_tasks))
    return pretrained_heads(heads, cache, epochs=config.optim.head_pretrain_epochs, lr=config.optim.head_lr,
                            seed=config.seed)


def run_study(cache: FeatureCache, workdir: Path, name: str, trial: dict, n_trials: int, *, stack: int = 1,
              parallel: int = 1) -> tuple[float, list[dict[str, Any]]]:
    """A real study (no MLflow), its wall time from prepared to finished, and its trials' timings."""
    shutil.rmtree(workdir / name, ignore_errors=True)
    config = StudyConfig(name=name, workdir=workdir / name, data={"cache": str(cache.path)}, space="loss-weights",
                         trial=trial, n_trials=n_trials, max_parallel=parallel, stack=stack, track=False,
                         enqueue_paper_default=False, trial_timeout_s=3600)
    orchestrator = Orchestrator(config)
    orchestrator.prepare()  # the raw baseline: once per study, outside the timed loop
    started = time.perf_counter()
    outcome = orchestrator.run()
    seconds = time.perf_counter() - started
    if outcome.completed != n_trials:
        raise SystemExit(f"study {name}: {outcome.completed} of {n_trials} trials completed; see {workdir / name}")
    timings = [json.loads((Path(t.user_attrs["out_dir"]) / "result.json").read_text())["timings"]
               for t in orchestrator.study.get_trials(deepcopy=False)]
    return seconds, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("work/bench-throughput"))
    parser.add_argument("--smoke", action="store_true", help="demo scale on a CPU, under 3 minutes")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 3 smoke, 8 full)")
    parser.add_argument("--stacks", default="1,2,4,8,16,32")
    parser.add_argument("--steps-only", action="store_true",
                        help="only the step timings, (a), (e) and (d)'s stacked steps: no studies")
    parser.add_argument("--parallel", default=None, help="concurrent trial processes for (c) (default 2 smoke, 2,4 full)")
    parser.add_argument("--cores", type=int, default=None,
                        help="pin this run and its trials to N cores (smoke default 1: on a shared 2-core box two "
                             "threads per process spin against other jobs and run many times slower)")
    args = parser.parse_args()
    cores = args.cores or (1 if args.smoke else None)
    if cores:
        os.sched_setaffinity(0, range(cores))  # trial processes inherit it; usable_cores() sees it
        torch.set_num_threads(cores)
    if args.smoke and args.stacks == "1,2,4,8,16,32":
        args.stacks = "1,2,4"
    args.parallel = args.parallel or ("2" if args.smoke else "2,4")
    scale = SCALES["demo" if args.smoke else "paper"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_trials = args.trials or (3 if args.smoke else 8)
    cache = random_cache(args.workdir / f"cache-{'demo' if args.smoke else 'paper'}", scale["videos"],
                         scale["tokens"], scale["dim"], scale["actions"])
    config = TrialConfig.model_validate({"cache": str(cache.path), **scale["trial"]})
    budget = config.optim.budget(TrainingData(cache).batches_per_epoch(config.optim.batch_size))
    print(f"{platform.node()} {device} torch {torch.__version__}; {cache.num_videos} videos, L={cache.tokens}, "
          f"D={cache.dim}, batch {config.optim.batch_size}, {budget.total_steps} steps per trial", flush=True)
    out: dict[str, Any] = {"device": str(device), "steps_per_trial": budget.total_steps}
    warm_heads(config, cache)

    limit = physical_limit(config, cache, device, steps=20 if args.smoke else 50)
    out.update(limit_step_ms=round(limit["step_ms"], 2), limit_tflops=round(limit["tflops"], 3),
               limit_train_s=round(limit["step_ms"] * budget.total_steps / 1e3, 2))
    print(f"(a) sync-free step {limit['step_ms']:.2f} ms, {limit['tflops']:.3f} TFLOP/s", flush=True)

    floor = launch_floor(args.workdir, device)
    out.update(floor)
    widest = floor[f"floor_stacked_ms_k{FLOOR['k']}"]
    print(f"(e) launch floor (D={FLOOR['dim']}, batch {FLOOR['batch']}, L={FLOOR['tokens']}: next to no compute): "
          f"one trial's step {floor['floor_step_ms']} ms; stacked step, K=1 {floor['floor_stacked_ms_k1']} ms, "
          f"K={FLOOR['k']} {widest} ms", flush=True)

    if args.steps_only:
        for k in [int(k) for k in args.stacks.split(",") if k]:
            step = stacked_step(config, cache, device, k, steps=10 if args.smoke else 20)
            out[f"step_ms_k{k}"] = round(step["step_s"] * 1e3, 1)
            print(f"(d) K={k}: step {out[f'step_ms_k{k}']} ms", flush=True)
        print(" ".join(f"{key}={value}" for key, value in out.items()))
        return

    single_s, timings = run_study(cache, args.workdir, "one-at-a-time", scale["trial"], n_trials)
    per_trial_eval = float(np.mean([t.get("eval_s", 0.0) for t in timings]))
    overhead = single_s / n_trials - float(np.mean([t.get("train_s", 0.0) for t in timings])) - per_trial_eval
    out.update(one_at_a_time_s=round(single_s, 1), s_per_trial_b=round(single_s / n_trials, 2),
               trials_per_h_b=round(3600 * n_trials / single_s, 1), eval_s=round(per_trial_eval, 2))
    print(f"(b) {n_trials} trials one at a time: {single_s:.1f} s", flush=True)
    stacked_s, _ = run_study(cache, args.workdir, "stacked", scale["trial"], n_trials, stack=n_trials)
    out.update(stacked_study_s=round(stacked_s, 1), stacked_speedup=round(single_s / stacked_s, 2))
    print(f"(d) {n_trials} trials stacked in one process: {stacked_s:.1f} s", flush=True)
    for k in [int(k) for k in args.stacks.split(",") if k]:
        step = stacked_step(config, cache, device, k, steps=5 if args.smoke else 20)
        per_trial = (step["step_s"] * budget.total_steps) / k + per_trial_eval + max(0.0, overhead) / k
        out[f"s_per_trial_k{k}"] = round(per_trial, 2)
        out[f"trials_per_h_k{k}"] = round(3600 / per_trial, 1)
        out[f"peak_mib_k{k}"] = round(step["peak_mib"], 1)
        print(f"(d) K={k}: step {step['step_s'] * 1e3:.1f} ms, {per_trial:.2f} s per trial with evaluation, "
              f"peak {step['peak_mib']:.0f} MiB", flush=True)

    for parallel in [int(p) for p in args.parallel.split(",") if p]:
        seconds, _ = run_study(cache, args.workdir, f"parallel-{parallel}", scale["trial"], n_trials, parallel=parallel)
        out[f"trials_per_h_c{parallel}"] = round(3600 * n_trials / seconds, 1)
        print(f"(c) {parallel} processes at once: {seconds:.1f} s", flush=True)

    print(" ".join(f"{key}={value}" for key, value in out.items()))


if __name__ == "__main__":
    main()
