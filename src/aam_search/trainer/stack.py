"""Stacked trials: K AAM members that differ only in per-member scalars, trained as one
stacked model: their parameters as ``[K, ...]`` tensors (``torch.func.stack_module_state``),
run forward as batched matmuls (``stacked_forward``), each member's loss terms vmapped, and
one ``autograd.grad`` for all.

What may differ between members (``stack_problem`` / ``STACK_SHAPE_FIELDS`` say what may not):
the loss weights w_lc, w_task, w_privacy and task weights, the NT-Xent temperature, the lr
(and everything that resolves to it), weight decay, gradient clipping, warm-up, the seed (its
own init, head pre-training and batch order), the guard thresholds, and all of evaluation
(each member is evaluated alone afterwards). What may not: anything that changes a shape or
the graph (the adapter's fields, batch size, the step budget, the adversarial projector, the
HSIC penalty's data-dependent row selection, DeepSpeed). ``adapter.dropout`` is a module
attribute, not a tensor, so all members share it; it is in the shape fields.

Each member keeps its own AdamW moments, learning-rate schedule, grad-norm clip and guard; a
member that diverges is cut out of the stack (its slices dropped) and the others go on.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torch.func import stack_module_state, vmap

from aam_search.trainer.config import TrialConfig
from aam_search.trainer.losses import latent_consistency, masked_nt_xent, task_loss, total_loss
from aam_search.trainer.member_optim import ADAM_BETAS, ADAM_EPS
from aam_search.trainer.model import mean_pool
from aam_search.trainer.objective import AAMObjective
from aam_search.trainer.stacked_forward import adapter_forward, heads_forward

# Dotted trial-config fields that must be equal across a stack (a prefix covers its subfields).
STACK_SHAPE_FIELDS = (
    "cache", "adapter", "optim.epochs", "optim.min_steps", "optim.batch_size",
    "loss.privacy_objective", "loss.w_hsic", "deepspeed",
)


def is_shape_field(path: str) -> bool:
    """Whether a dotted trial-config field changes the stacked model's shape or graph."""
    return any(path == field or path.startswith(field + ".") for field in STACK_SHAPE_FIELDS)


def stack_problem(config: TrialConfig) -> str | None:
    """Why this trial cannot be a stack member at all, or None."""
    if config.loss.privacy_objective != "selfsup":
        return "the adversarial objective alternates a projector phase (not stacked yet)"
    if config.loss.w_hsic > 0:
        return "the HSIC penalty selects labelled rows by a data-dependent shape"
    if config.deepspeed is not None:
        return "a DeepSpeed trial owns its engine"
    return None


def stack_key(config: TrialConfig) -> str:
    """Equal for two trials exactly when they may share a stack."""
    data = config.model_dump(mode="json")
    picked = {}
    for field in STACK_SHAPE_FIELDS:
        value: Any = data
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        picked[field] = value
    return repr(sorted(picked.items()))


def member_scalars(configs: list[TrialConfig], tasks: list[str], device: torch.device) -> dict[str, Any]:
    """The per-member scalars of the loss as ``[K]`` tensors (vmapped over dim 0)."""
    def column(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    return {
        "w_lc": column([c.loss.w_lc for c in configs]),
        "w_task": column([c.loss.w_task for c in configs]),
        "w_privacy": column([c.loss.w_privacy for c in configs]),
        "temperature": column([c.loss.temperature for c in configs]),
        "task_weights": {t: column([c.loss.task_weights.get(t, 1.0) for c in configs]) for t in tasks},
    }


class StackedAAM:
    """K members' adapters and heads as stacked ``[K, ...]`` tensors, with per-member AdamW."""

    def __init__(self, objectives: list[AAMObjective], configs: list[TrialConfig]) -> None:
        first = objectives[0]
        self.adapter_base = copy.deepcopy(first.adapter).to("meta")
        self.heads_base = copy.deepcopy(first.heads).to("meta")
        adapter, _ = stack_module_state([o.adapter for o in objectives])
        heads, _ = stack_module_state([o.heads for o in objectives])
        self.params = {**{f"adapter.{k}": v.detach() for k, v in adapter.items()},
                       **{f"heads.{k}": v.detach() for k, v in heads.items()}}
        self.device = next(iter(self.params.values())).device
        self.configs = list(configs)
        self.scalars = member_scalars(self.configs, list(first.heads.num_classes), self.device)
        self.first = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.second = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.steps = 0

    def __len__(self) -> int:
        return len(self.configs)

    def _member_terms(self, adapted: Tensor, logits: dict[str, Tensor], scalars: dict[str, Any],
                      batch: dict[str, Any]) -> dict[str, Tensor]:
        """One member's loss terms (vmapped over members): its adapted views, its task logits."""
        clips = batch["clips"]
        size = clips.shape[0]
        l_lc = latent_consistency(adapted[:size], clips)
        l_task, per_task = task_loss(logits, batch["targets"], scalars["task_weights"])
        l_privacy = masked_nt_xent(mean_pool(adapted[size : 2 * size]), mean_pool(adapted[2 * size :]),
                                   batch["pair_mask"], scalars["temperature"])
        weights = SimpleNamespace(lc=scalars["w_lc"], task=scalars["w_task"], privacy=scalars["w_privacy"])
        out = {"loss": total_loss(l_lc, l_task, l_privacy, weights), "l_lc": l_lc, "l_task": l_task,
               "l_privacy": l_privacy}
        out.update({f"l_task/{name}": value for name, value in per_task.items()})
        return out

    def _losses(self, params: dict[str, Tensor], batch: dict[str, Any], batched: bool) -> dict[str, Tensor]:
        """Every member's ``[K]`` loss terms, differentiable in ``params``."""
        adapter = {k[len("adapter."):]: v for k, v in params.items() if k.startswith("adapter.")}
        heads = {k[len("heads."):]: v for k, v in params.items() if k.startswith("heads.")}
        views = torch.cat([batch["clips"], batch["static_a"], batch["static_b"]], dim=-3)
        if not batched:  # one batch for all members
            views = views.expand(len(self), *views.shape)
        adapted = adapter_forward(self.adapter_base, adapter, views, self.adapter_base.training)
        logits = heads_forward(self.heads_base, heads, adapted[:, : batch["clips"].shape[-3]])
        terms = vmap(self._member_terms, in_dims=(0, 0, 0, 0 if batched else None))
        return terms(adapted, logits, self.scalars, batch)

    def train(self, training: bool = True) -> None:
        self.adapter_base.train(training)
        self.heads_base.train(training)

    def step(self, batch: dict[str, Any], lrs: list[float], batched: bool) -> dict[str, Tensor]:
        """One AdamW step of every member on its batch (``batched``: ``[K, B, ...]`` inputs, one
        per member; else one batch shared); returns ``[K]`` loss terms, on the device."""
        leaves = {name: value.detach().requires_grad_() for name, value in self.params.items()}
        out = self._losses(leaves, batch, batched)
        # A member's loss depends on its own slices only, so the sum's gradient is each member's.
        grads = dict(zip(leaves, torch.autograd.grad(out["loss"].sum(), list(leaves.values()))))
        clip = torch.tensor([c.optim.grad_clip or math.inf for c in self.configs], device=self.device)
        squares = sum(g.detach().float().pow(2).flatten(1).sum(1) for g in grads.values())
        # torch.nn.utils.clip_grad_norm_'s rule, per member
        coef = (clip / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        self._adamw(grads, coef, torch.tensor(lrs, device=self.device))
        return {name: value.detach() for name, value in out.items()}

    @torch.no_grad()
    def _adamw(self, grads: dict[str, Tensor], coef: Tensor, lrs: Tensor) -> None:
        """torch.optim.AdamW's single-tensor update, with a learning rate and weight decay per
        member: the same operations in the same order, as multi-tensor (foreach) calls over all
        parameters, so the host issues a few calls a step rather than a few per parameter."""
        beta1, beta2 = ADAM_BETAS
        self.steps += 1
        correction1 = 1 - beta1 ** self.steps
        correction2 = math.sqrt(1 - beta2 ** self.steps)
        decay = torch.tensor([c.optim.weight_decay for c in self.configs], device=self.device)
        names = list(self.params)
        params, first, second = ([state[n] for n in names] for state in (self.params, self.first, self.second))

        def per_member(values: Tensor) -> list[Tensor]:  # a [K] value broadcast over each parameter
            return [values.view((-1,) + (1,) * (p.dim() - 1)) for p in params]

        g = torch._foreach_mul([grads[n] for n in names], per_member(coef))
        torch._foreach_mul_(params, per_member(1 - lrs * decay))
        torch._foreach_lerp_(first, g, 1 - beta1)
        torch._foreach_mul_(second, beta2)
        torch._foreach_addcmul_(second, g, g, value=1 - beta2)
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, correction2)
        torch._foreach_add_(denom, ADAM_EPS)
        update = torch._foreach_div(first, denom)
        torch._foreach_mul_(update, per_member(lrs / correction1))
        torch._foreach_sub_(params, update)

    def keep(self, members: list[int]) -> None:
        """Cut the stack down to ``members`` (positions), e.g. without a diverged one."""
        index = torch.tensor(members, dtype=torch.long, device=self.device)
        for state in (self.params, self.first, self.second):
            for name in state:
                state[name] = state[name].index_select(0, index)
        self.configs = [self.configs[m] for m in members]
        tasks = list(self.scalars["task_weights"])
        self.scalars = member_scalars(self.configs, tasks, self.device)

    @torch.no_grad()
    def write_back(self, position: int, objective: AAMObjective) -> None:
        """Copy member ``position``'s trained tensors into its own objective's modules."""
        for prefix, module in (("adapter", objective.adapter), ("heads", objective.heads)):
            for name, param in module.named_parameters():
                param.copy_(self.params[f"{prefix}.{name}"][position])


def member_bytes(config: TrialConfig, dim: int, tokens: int, parameters: int) -> int:
    """A generous estimate of one member's training memory: fp32 weights, grads and two
    AdamW moments (plus the stacked copy), and the activations of its 3 x batch token rows."""
    rows = 3 * config.optim.batch_size * tokens
    width = dim * (4 + 2 * config.adapter.ffn_mult)  # qkv, out, norms and the FFN's hidden
    activations = rows * width * config.adapter.layers * 4 * 3  # forward, saved, backward
    return int(parameters * 4 * 5 + activations + rows * dim * 4 * 4)


def available_bytes(device: torch.device) -> int:
    """Free memory where the stack trains: CUDA free memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def memory_cap(per_member: int, available: int, fraction: float = 0.7) -> int:
    """How many members fit in ``fraction`` of ``available`` bytes (at least one)."""
    return max(1, int(available * fraction) // max(1, per_member))
