"""The attacker suite: fresh models, trained from scratch, that try to read private attributes.

Kinds (``ATTACKER_KINDS``):

- ``linear``: L2-regularised logistic regression per attribute, full-batch L-BFGS in float64
  (convex: trained to its optimum);
- ``mlp``: the paper's attacker, ``Linear(d,d)-ReLU-Linear(d,A)``;
- ``mlp_deep``: deeper and wider, two hidden layers of ``min(2d, 1024)`` units;
- ``knn``: cosine kNN (``knn.py``).

One evaluation fits many *members* at once: each has its own training rows and its own
standardisation (train-then-score and every cross-fitted fold, of every protocol). A member
is defined alone: its initialisation and its batches come from its own generator (seeded by
the evaluation seed and the member's key), its batch size, step budget and cosine schedule
from its own row count. Training the members together is then the same computation as
training each alone: every layer is one batched matmul over members, AdamW is elementwise
(``member_optim.MemberAdamW``: each member on its own cosine schedule), and a member past its own budget
gets no loss and no update, so it stays where it stopped while the others go on. Nothing in
the loop reads a value back to the host, so it runs on the features' device unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from aam_search.trainer.member_optim import BatchStream, MemberAdamW

ATTACKER_KINDS = ("linear", "mlp", "mlp_deep", "knn")
TRAINED_KINDS = ("linear", "mlp", "mlp_deep")
DEEP_HIDDEN_LAYERS = 2
DEEP_MAX_WIDTH = 1024
# Small sets: a few batches per epoch would leave a model untrained. On the demo data the
# paper MLP's cMAP stops moving after 300 steps (static, lr 1e-3: 0.862, 0.890, 0.895 at 150,
# 300, 600 steps); lr 3e-3 reaches at least as much in 300 steps on both protocols (static
# 0.898 / 0.891 for mlp / mlp_deep, clip 0.840 / 0.848) and learns small problems 1e-3 does not.
MIN_STEPS = 300
ATTACK_BATCH = 64
ATTACK_LR = 3e-3
ATTACK_WEIGHT_DECAY = 1e-4
LINEAR_L2 = 1e-2  # on standardised features, as the utility probe
LINEAR_MAX_ITER = 500
# In float64: fp32 stalls near a gradient of 4e-5 on the demo (the loss stops changing in
# float32), where members fitted jointly or alone still differ by 5e-3 in a weight; at these
# tolerances both reach ~2e-7 and differ by ~5e-5, for ~0.3 s per protocol on the demo CPU.
LINEAR_TOLERANCE_GRAD = 1e-7
LINEAR_TOLERANCE_CHANGE = 1e-12
# A member whose gradient is still above this after the joint L-BFGS is refitted alone.
LINEAR_REFIT_GRAD = 10 * LINEAR_TOLERANCE_GRAD
PLAN_CHUNK = 512  # steps of batches drawn and sent to the device at a time
_STREAMS = {"batches": 0, "linear": 1, "mlp": 2, "mlp_deep": 3, "knn": 4}


@contextmanager
def full_precision() -> Iterator[None]:
    """float32 matmuls at full precision (no TF32) inside, whatever training chose outside: an
    evaluation's numbers must not depend on the device beyond float rounding."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def hidden_sizes(kind: str, dim: int) -> list[int]:
    if kind == "linear":
        return []
    if kind == "mlp":
        return [dim]
    if kind == "mlp_deep":
        return [min(2 * dim, DEEP_MAX_WIDTH)] * DEEP_HIDDEN_LAYERS
    raise ValueError(f"unknown attacker kind {kind!r} ({', '.join(TRAINED_KINDS)} are trained; knn is not)")


def make_attacker(kind: str, dim: int, outputs: int) -> nn.Module:
    """One attacker of a trained kind as a plain module (the shape the suite trains)."""
    sizes = [dim, *hidden_sizes(kind, dim), outputs]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1]) if len(layers) > 2 else layers[0]


def member_generator(seed: int, key: tuple[int, ...], stream: str) -> torch.Generator:
    """The CPU generator of one member's ``stream`` (its batches, or one kind's initial weights):
    the same whichever members are fitted beside it, and on whatever device they train."""
    state = np.random.SeedSequence([seed, _STREAMS[stream], *key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def initial_parameters(sizes: list[int], generator: torch.Generator) -> torch.Tensor:
    """One member's flat initial parameters: per layer ``W [in, out]`` then ``b [out]``, drawn
    as ``nn.Linear`` does by default (uniform in ``+-1/sqrt(fan_in)``)."""
    parts = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = fan_in**-0.5
        parts.append((torch.rand(fan_in * fan_out, generator=generator) * 2 - 1) * bound)
        parts.append((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
    return torch.cat(parts)


class StackedMLP(nn.Module):
    """``members`` independent MLPs of one shape in one flat parameter ``[M, P]``, evaluated
    in one pass: ``[M, B, D] -> [M, B, A]`` (layer by layer one ``baddbmm`` over members)."""

    def __init__(self, sizes: list[int], initial: torch.Tensor) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.flat = nn.Parameter(initial.clone())

    @property
    def members(self) -> int:
        return len(self.flat)

    def layers(self, flat: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(W [M, in, out], b [M, 1, out])`` per layer: views of ``flat`` (default: all members)."""
        flat = self.flat if flat is None else flat
        out, start = [], 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            weight = flat[:, start : start + fan_in * fan_out].view(-1, fan_in, fan_out)
            start += fan_in * fan_out
            bias = flat[:, start : start + fan_out].view(-1, 1, fan_out)
            start += fan_out
            out.append((weight, bias))
        return out

    @property
    def weights(self) -> list[torch.Tensor]:
        return [weight for weight, _ in self.layers()]

    def forward(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        """``x [M, B, D]``; ``flat``: the parameters of the members ``x`` is for (a slice of ``flat``)."""
        layers = self.layers(flat)
        for index, (weight, bias) in enumerate(layers):
            x = torch.baddbmm(bias, x, weight)
            if index < len(layers) - 1:
                x = torch.relu(x)
        return x


def stacked(kind: str, dim: int, outputs: int, keys: list[tuple[int, ...]], seed: int,
            device: torch.device) -> StackedMLP:
    """The members ``keys`` of ``kind``, each initialised from its own generator."""
    sizes = [dim, *hidden_sizes(kind, dim), outputs]
    initial = torch.stack([initial_parameters(sizes, member_generator(seed, key, kind)) for key in keys])
    return StackedMLP(sizes, initial.to(device))


def standardization(x: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member mean and std ``[M, 1, D]`` of the rows ``train [M, N]`` selects."""
    means, stds = [], []
    for mask in train:
        rows = x[mask]
        means.append(rows.mean(0))
        stds.append(rows.std(0).nan_to_num(0.0).clamp_min(1e-6) if len(rows) > 1
                    else torch.ones(x.shape[1], device=x.device))
    return torch.stack(means)[:, None], torch.stack(stds)[:, None]


def member_schedule(rows: int, *, epochs: int, batch_size: int) -> tuple[int, int]:
    """``(batch, steps)`` of a member with ``rows`` training rows."""
    batch = min(batch_size, rows)
    return batch, max(epochs * -(-rows // batch), MIN_STEPS)


def train_members(
    x: torch.Tensor,
    targets: torch.Tensor,
    train: torch.Tensor,
    kinds: tuple[str, ...],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    keys: list[tuple[int, ...]] | None = None,
) -> dict[str, tuple[StackedMLP, torch.Tensor, torch.Tensor]]:
    """Fit every trained kind for every member; returns ``kind -> (model, mean, std)``.

    ``x [N, D]``, ``targets [N, A]`` (-1 = unknown: no loss), ``train [M, N]`` bool (member
    m's training rows, none empty); ``keys`` name the members for their generators (default:
    their positions). Binary cross-entropy per attribute, averaged over a member's labelled
    entries of its batch. Runs on ``x``'s device.
    """
    device = x.device
    keys = keys if keys is not None else [(m,) for m in range(len(train))]
    if len(keys) != len(train):
        raise ValueError(f"{len(keys)} member keys for {len(train)} members")
    train = train.to(device)
    targets = targets.to(device)
    mean, std = standardization(x, train)
    out = {}
    if "linear" in kinds:
        out["linear"] = (fit_linear(x, targets, train, mean, std, keys, seed), mean, std)
    trained = [k for k in kinds if k in TRAINED_KINDS and k != "linear"]
    if not trained:
        return out
    # Members sorted by budget, longest first: at every step the members still training are a
    # prefix, and only they are computed (a long member's late steps cost one member's work).
    pools = [mask.nonzero().squeeze(1).cpu() for mask in train]
    schedules = [member_schedule(len(pool), epochs=epochs, batch_size=batch_size) for pool in pools]
    order = sorted(range(len(pools)), key=lambda m: -schedules[m][1])
    budgets = [schedules[m][1] for m in order]
    streams = [BatchStream(pools[m], schedules[m][0], member_generator(seed, keys[m], "batches")) for m in order]
    dim, outputs = x.shape[1], targets.shape[1]
    models = {kind: stacked(kind, dim, outputs, [keys[m] for m in order], seed, device) for kind in trained}
    parameters = [model.flat for model in models.values()]
    optimizer = MemberAdamW(parameters, budgets, lr=lr, weight_decay=ATTACK_WEIGHT_DECAY)
    sorted_mean, sorted_std = mean[order], std[order]
    known = (targets >= 0).float()
    labels = targets.clamp_min(0).float()
    for start in range(0, budgets[0], PLAN_CHUNK):
        index, slots = _plan_chunk(streams, budgets, [schedules[m][0] for m in order], start)
        index, slots = index.to(device, non_blocking=True), slots.to(device, non_blocking=True)
        for offset in range(len(index)):
            step = start + offset
            active = sum(budget > step for budget in budgets)  # host arithmetic, no sync
            rows = index[offset, :active]  # [k, B]
            inputs = (x[rows] - sorted_mean[:active]) / sorted_std[:active]
            weight = known[rows] * slots[offset, :active, :, None]  # padding: no loss
            per_member = weight.sum((1, 2)).clamp_min(1)
            live = [model.flat[:active] for model in models.values()]
            loss = x.new_zeros(())
            for model, flat in zip(models.values(), live):
                losses = nn.functional.binary_cross_entropy_with_logits(model(inputs, flat), labels[rows],
                                                                        reduction="none")
                loss = loss + ((losses * weight).sum((1, 2)) / per_member).sum()
            optimizer.step(list(torch.autograd.grad(loss, live)), step)
    inverse = torch.as_tensor(np.argsort(order), device=device)
    for model in models.values():
        with torch.no_grad():
            model.flat.copy_(model.flat[inverse])  # back to the callers' order of members
    return out | {kind: (model.eval(), mean, std) for kind, model in models.items()}


def _plan_chunk(streams: list[BatchStream], budgets: list[int], batches: list[int],
                start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches ``[C, k, B]`` of the steps ``start..start+C`` for the ``k`` members still
    training at ``start`` (sorted by budget, longest first), padded to the widest batch, and
    which slots are real. Drawn on the CPU from the members' own generators."""
    steps = min(PLAN_CHUNK, budgets[0] - start)
    active = sum(budget > start for budget in budgets)
    widest = max(batches[:active])
    index = torch.zeros(steps, active, widest, dtype=torch.long)
    slots = torch.zeros(steps, active, widest)
    for member in range(active):
        count = min(steps, budgets[member] - start)
        index[:count, member, : batches[member]] = streams[member].take(count)
        slots[:count, member, : batches[member]] = 1
    return index, slots


def _linear_loss(model: StackedMLP, inputs: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Every member's mean BCE over its labelled training entries, plus its L2, summed."""
    losses = nn.functional.binary_cross_entropy_with_logits(model(inputs), labels, reduction="none")
    per_member = weight.sum((1, 2)).clamp_min(1)
    return ((losses * weight).sum((1, 2)) / per_member).sum() + 0.5 * LINEAR_L2 * model.weights[0].pow(2).sum()


def _lbfgs(model: StackedMLP, inputs: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> None:
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=LINEAR_MAX_ITER, history_size=20,
                                  tolerance_grad=LINEAR_TOLERANCE_GRAD, tolerance_change=LINEAR_TOLERANCE_CHANGE,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = _linear_loss(model, inputs, labels, weight)
        loss.backward()
        return loss

    optimizer.step(closure)


def fit_linear(x: torch.Tensor, targets: torch.Tensor, train: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               keys: list[tuple[int, ...]], seed: int) -> StackedMLP:
    """Every member's logistic regression: one full-batch L-BFGS (strong Wolfe) on the sum of
    the members' losses, then each member's own gradient checked.

    The members' problems are separate and strictly convex in the weights, so the sum's
    minimiser is every member's minimiser; but the line search picks one step length for the
    sum and the stopping rule sees the sum, so a hard member could stop short of its optimum
    while the others are done. A member whose own gradient is still above
    ``LINEAR_REFIT_GRAD`` is refitted alone (from its own initialisation).
    """
    model = stacked("linear", x.shape[1], targets.shape[1], keys, seed, x.device).double()
    inputs = ((x[None] - mean) / std).double()  # [M, N, D]
    weight = (targets >= 0)[None].double() * train[..., None].double()
    labels = targets.clamp_min(0).double()[None].expand(len(train), -1, -1)
    _lbfgs(model, inputs, labels, weight)
    model.zero_grad(set_to_none=True)
    _linear_loss(model, inputs, labels, weight).backward()
    gradient = model.flat.grad.abs().amax(1).cpu()  # one read, after the fit
    model.flat.grad = None
    for member in (gradient > LINEAR_REFIT_GRAD).nonzero().squeeze(1).tolist():
        alone = stacked("linear", x.shape[1], targets.shape[1], [keys[member]], seed, x.device).double()
        span = slice(member, member + 1)
        _lbfgs(alone, inputs[span], labels[span], weight[span])
        with torch.no_grad():
            model.flat[member] = alone.flat[0]
    return model.float().eval()


@torch.no_grad()
def member_scores(fitted: tuple[StackedMLP, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Scores ``[M, N, A]`` of every member of one fitted kind on rows ``x [N, D]``."""
    model, mean, std = fitted
    return model((x[None] - mean) / std)
