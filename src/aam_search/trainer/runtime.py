"""The trial's runtime pieces: the Accelerator (devices, DDP, bf16, DeepSpeed), the AdamW
implementation for the device, and the parameter digest that shows ranks stayed in step.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import torch

from aam_search.trainer.config import OptimConfig, TrialConfig


def make_accelerator(config: TrialConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    use_cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {
        # On CPU every rank would otherwise think it is the main one; DeepSpeed brings its
        # own CPU accelerator, and cpu=True would silently drop its plugin.
        "cpu": not use_cuda and config.deepspeed is None,
        "mixed_precision": "bf16" if use_cuda else "no",
        # The projector phase leaves the adapter without gradients.
        "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)],
    }
    if config.deepspeed is not None:
        from accelerate.utils import DeepSpeedPlugin

        _single_process_env()
        plugin = DeepSpeedPlugin(hf_ds_config=str(config.deepspeed))
        ds = plugin.deepspeed_config
        # "auto" values are normally filled from a DataLoader; ours is a custom sampler.
        ds["train_micro_batch_size_per_gpu"] = config.optim.batch_size
        ds.setdefault("gradient_accumulation_steps", 1)
        if ds.get("gradient_accumulation_steps") == "auto":
            ds["gradient_accumulation_steps"] = 1
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = config.optim.grad_clip or 0.0
        ds.pop("train_batch_size", None)
        kwargs["deepspeed_plugin"] = plugin
    return Accelerator(**kwargs)


def _single_process_env() -> None:
    """Run directly (not under a launcher), DeepSpeed would look for MPI to find its rank:
    describe a world of one process instead, on a free loopback port."""
    if "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def make_adamw(groups: list[dict], optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel on CUDA, multi-tensor (foreach) elsewhere."""
    implementation = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=optim.effective_lr, weight_decay=optim.weight_decay, **implementation)


def unwrap(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The module inside the DDP wrapper ``accelerator.prepare`` put round ``model``.

    Not ``accelerator.unwrap_model`` outside DeepSpeed: it imports DeepSpeed whenever it is
    installed, and DeepSpeed imports MLflow, pandas, pyarrow and FastAPI, 2-4 s of every trial
    process on a CPU (the first evaluation paid it; see BENCHMARKS.md, issue 12). A compiled
    adapter is compiled in place (``Module.compile``) and keeps its own class.
    """
    if accelerator.distributed_type.value == "DEEPSPEED":
        return accelerator.unwrap_model(model)
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)  # a whole-model torch.compile, should one come


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order (one host read, at the end)."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
