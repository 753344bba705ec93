"""Batched evaluation gives the numbers of one-at-a-time evaluation.

Every member (a protocol's train-then-score attacker, or one cross-fitted fold) of every kind
is defined alone: its own generator, batches, budget and schedule. Training them stacked must
reproduce training each alone, within float rounding: stated here as cMAP within 1e-4 and
scores within 1e-3 (fp32, a few hundred steps; matmuls over a member dimension round
differently from single matmuls).
"""

import numpy as np
import pytest
import torch

import aam_search.trainer.attackers as attackers
from aam_search.trainer.attackers import (
    ATTACK_BATCH,
    ATTACK_LR,
    ATTACK_WEIGHT_DECAY,
    initial_parameters,
    hidden_sizes,
    make_attacker,
    member_generator,
    member_schedule,
)
from aam_search.trainer.member_optim import BatchStream, member_batches
from aam_search.trainer.feature_eval import measure_protocols
from aam_search.trainer.resampling import Resampler
from aam_search.trainer.suite_fit import ProtocolRows, fit_suite, plan_members

CMAP_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-3
NAMES = ["ring", "linear", "noise"]


@pytest.fixture(autouse=True)
def _short_budgets(monkeypatch):
    # Few steps, and budgets that differ between members (the train member runs longest).
    monkeypatch.setattr(attackers, "MIN_STEPS", 20)


def _protocol(train_videos: int, eval_videos: int, rows_per_video: int, seed: int, code: int) -> ProtocolRows:
    """Three attributes: one nonlinear (|x0| large), one linear (x1 > 0), one noise; some
    labels unknown (-1), as in a cache where not every row is labelled for every attribute."""
    g = torch.Generator().manual_seed(seed)
    videos = train_videos + eval_videos
    centre = torch.randn(videos, 6, generator=g)
    attrs = torch.stack([(centre[:, 0].abs() > 0.674).long(), (centre[:, 1] > 0).long(),
                         (torch.rand(videos, generator=g) < 0.5).long()], 1)
    attrs[torch.rand(videos, generator=g) < 0.15, 2] = -1
    owner = torch.arange(videos).repeat_interleave(rows_per_video)
    x = centre[owner] + 0.1 * torch.randn(len(owner), 6, generator=g)
    return ProtocolRows(x, attrs[owner], owner + 1000 * code, train_videos * rows_per_video, code)


def _protocols() -> list[ProtocolRows]:
    return [_protocol(90, 40, 1, seed=0, code=0), _protocol(60, 30, 3, seed=1, code=1)]


def _measure(batched: bool):
    resampler = Resampler.draw(np.unique(np.concatenate([p.eval_owner for p in _protocols()])), 200, seed=0)
    return measure_protocols(_protocols(), NAMES, kinds=attackers.ATTACKER_KINDS, folds=4, epochs=12, seed=3,
                             knn_k=None, resampler=resampler, batched=batched)


def test_batched_suite_gives_the_numbers_of_one_at_a_time_fits():
    batched, alone = _measure(True), _measure(False)
    for (fast, _), (slow, _) in zip(batched, alone):
        assert fast["crossfit_folds"] == slow["crossfit_folds"] == 4
        for field in ("attackers", "attackers_crossfit"):  # every kind, both fits
            assert set(fast[field]) == set(attackers.ATTACKER_KINDS)
            for kind in fast[field]:
                assert fast[field][kind] == pytest.approx(slow[field][kind], abs=CMAP_TOLERANCE), (field, kind)
        for fit in ("train", "crossfit"):
            for kind, per_attribute in fast["per_attribute_by_attacker"][fit].items():
                reference = slow["per_attribute_by_attacker"][fit][kind]
                assert per_attribute == pytest.approx(reference, abs=CMAP_TOLERANCE), (fit, kind)
        assert fast["cmap"] == pytest.approx(slow["cmap"], abs=CMAP_TOLERANCE)
        assert fast["knn_k"] == slow["knn_k"]
        for ci in ("ci", "ci_train", "ci_crossfit"):
            assert fast[ci] == pytest.approx(slow[ci], abs=CMAP_TOLERANCE)
    # The attackers learned something: the linear attribute is read far above chance.
    for kind in ("linear", "mlp_deep"):
        assert batched[0][0]["per_attribute_by_attacker"]["train"][kind]["linear"] > 0.85


def _reference_mlp(kind: str, rows: ProtocolRows, train: torch.Tensor, key: tuple[int, ...], *, epochs: int,
                   seed: int) -> torch.nn.Module:
    """One member trained the plain way: nn.Sequential, torch.optim.AdamW, a LambdaLR cosine."""
    dim, outputs = rows.x.shape[1], rows.labels.shape[1]
    sizes = [dim, *hidden_sizes(kind, dim), outputs]
    model = make_attacker(kind, dim, outputs)
    flat = initial_parameters(sizes, member_generator(seed, key, kind))
    start = 0
    with torch.no_grad():
        for layer in [m for m in model.modules() if isinstance(m, torch.nn.Linear)]:
            fan_in, fan_out = layer.in_features, layer.out_features
            layer.weight.copy_(flat[start : start + fan_in * fan_out].view(fan_in, fan_out).T)
            start += fan_in * fan_out
            layer.bias.copy_(flat[start : start + fan_out])
            start += fan_out
    pool = train.nonzero().squeeze(1)
    batch, steps = member_schedule(len(pool), epochs=epochs, batch_size=ATTACK_BATCH)
    batches = member_batches(pool, batch, steps, member_generator(seed, key, "batches"))
    mean, std = rows.x[pool].mean(0), rows.x[pool].std(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ATTACK_LR, weight_decay=ATTACK_WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * step / steps)))
    for index in batches:
        labels = rows.labels[index]
        known = (labels >= 0).float()
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            model((rows.x[index] - mean) / std), labels.clamp_min(0).float(), reduction="none")
        loss = (losses * known).sum() / known.sum().clamp_min(1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return lambda query: model((query - mean) / std)


def test_each_stacked_member_matches_a_plainly_trained_model():
    """The stacked loop (members of different budgets and batch sizes, fused per-member
    AdamW, masking of finished members) against nn.Sequential + torch.optim.AdamW per member."""
    protocols = _protocols()
    members = [m for position, rows in enumerate(protocols) for m in plan_members(rows, position, 4, seed=3)[0]]
    schedules = {member_schedule(int(m.train.sum()), epochs=12, batch_size=ATTACK_BATCH) for m in members}
    assert len({steps for _, steps in schedules}) > 1 and len({batch for batch, _ in schedules}) > 1
    scores, _ = fit_suite(protocols, members, ("mlp", "mlp_deep"), epochs=12, seed=3, knn_k=None)
    for index in (0, 3, 5, 8):  # train-then-score and folds, of both protocols
        member = members[index]
        rows = protocols[member.protocol]
        for kind in ("mlp", "mlp_deep"):
            reference = _reference_mlp(kind, rows, member.train, member.key, epochs=12, seed=3)
            with torch.no_grad():
                expected = reference(rows.x[member.query]).double().numpy()
            assert np.abs(scores[kind][index] - expected).max() < SCORE_TOLERANCE, (index, kind)


def test_a_member_does_not_depend_on_the_members_beside_it():
    """Adding a protocol (more members, a longer loop) leaves the first protocol's numbers as
    they were: each member's generators and schedule are its own."""
    protocols = _protocols()
    resampler = Resampler.draw(np.unique(protocols[0].eval_owner), 100, seed=0)
    common = dict(kinds=("linear", "mlp"), folds=3, epochs=12, seed=5, knn_k=None, resampler=resampler)
    alone, = measure_protocols(protocols[:1], NAMES, **common)
    together = measure_protocols(protocols, NAMES, **common)[0]
    for field in ("attackers", "attackers_crossfit"):
        assert together[0][field] == pytest.approx(alone[0][field], abs=CMAP_TOLERANCE)


def test_a_finished_member_stops_moving():
    """A member past its budget gets no update: training on longer than its budget (beside a
    member with more rows) leaves it where it would stop alone."""
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    labels = (x[:, :1] > 0).long()
    short = torch.zeros(200, dtype=torch.bool)
    short[:30] = True
    long = torch.ones(200, dtype=torch.bool)
    together = attackers.train_members(x, labels, torch.stack([short, long]), ("mlp",), epochs=40, lr=ATTACK_LR,
                                       batch_size=ATTACK_BATCH, seed=0, keys=[(0,), (1,)])["mlp"][0]
    alone = attackers.train_members(x, labels, short[None], ("mlp",), epochs=40, lr=ATTACK_LR,
                                    batch_size=ATTACK_BATCH, seed=0, keys=[(0,)])["mlp"][0]
    assert member_schedule(30, epochs=40, batch_size=ATTACK_BATCH)[1] < member_schedule(
        200, epochs=40, batch_size=ATTACK_BATCH)[1]
    assert torch.allclose(together.flat[0], alone.flat[0], atol=1e-5)


def test_batches_do_not_depend_on_how_they_are_drawn_in_chunks(monkeypatch):
    """Batches are drawn a chunk of steps at a time; the chunk size changes nothing."""
    pool = torch.arange(10, 47)
    whole = member_batches(pool, 16, 25, member_generator(0, (1, 2), "batches"))
    stream = BatchStream(pool, 16, member_generator(0, (1, 2), "batches"))
    assert torch.equal(torch.cat([stream.take(n) for n in (3, 1, 10, 11)]), whole)
    x = torch.randn(150, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.stack([(x[:, 0] > 0).long(), (x[:, 1] > 0.5).long()], 1)
    train = torch.stack([torch.arange(150) < 40, torch.arange(150) >= 20, torch.ones(150, dtype=torch.bool)])
    fit = lambda: attackers.train_members(x, labels, train, ("mlp",), epochs=30, lr=ATTACK_LR,  # noqa: E731
                                          batch_size=ATTACK_BATCH, seed=0)["mlp"][0].flat
    big = fit()
    monkeypatch.setattr(attackers, "PLAN_CHUNK", 7)
    assert torch.allclose(fit(), big, atol=1e-6)


def test_evaluation_runs_at_full_float32_precision_and_restores_the_setting():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # as a training loop may set it (TF32 on a GPU)
    try:
        with attackers.full_precision():
            assert torch.get_float32_matmul_precision() == "highest"
            assert not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_unfused_adamw_fallback_matches_the_fused_kernel():
    """Devices without torch's fused AdamW kernel take the plain update: the same numbers."""
    from aam_search.trainer.member_optim import MemberAdamW

    g = torch.Generator().manual_seed(0)
    start = torch.randn(3, 20, generator=g)
    grads = [torch.randn(3, 20, generator=g) for _ in range(12)]
    budgets = [12, 5, 12]  # member 1 stops after 5 steps
    results = []
    for fused in (True, False):
        flat = start.clone()
        optimizer = MemberAdamW([flat], budgets, lr=1e-2, weight_decay=1e-2)
        optimizer.fused = fused
        for step, grad in enumerate(grads):
            optimizer.step([grad], step)
        results.append(flat)
    assert torch.allclose(results[0], results[1], atol=1e-6)
    reference = start[1].clone().requires_grad_()
    plain = torch.optim.AdamW([reference], lr=1e-2, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(plain, lambda step: 0.5 * (1 + np.cos(np.pi * step / 5)))
    for grad in grads[:5]:
        reference.grad = grad[1].clone()
        plain.step()
        schedule.step()
    assert torch.allclose(results[1][1], reference.detach(), atol=1e-6)  # stopped where it would alone


def _mixing(dim: int, seed: int):
    """A fixed random token map: a stand-in for one stack member's trained adapter."""
    weight = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)) / dim**0.5
    return lambda tokens: torch.tanh(tokens.float() @ weight)


def _numbers(result: dict) -> dict[str, float]:
    """Every number a trial's result is built from: utility per task, and per protocol the
    leakage, each attacker's cMAP on each fit, and the interval bounds."""
    out = {f"{task}:top1": summary["top1"] for task, summary in result["tasks"].items()}
    for protocol, leak in result["privacy"].items():
        out[f"{protocol}:cmap"] = leak["cmap"]
        for fit in ("attackers", "attackers_crossfit"):
            out.update({f"{protocol}:{fit}:{kind}": value for kind, value in leak[fit].items()})
    for name, bounds in result["ci"].items():
        if bounds is not None:
            out.update({f"ci:{name}:lo": bounds[0], f"ci:{name}:hi": bounds[1]})
    return out


# On the small cache a cross-fitted linear member trains on ~5 rows, where some attribute has
# one class only: its weights sit at the L2 optimum's zero up to solver noise and its AP is
# decided by ties, so any regrouping of the joint L-BFGS moves it (today already: the clip
# protocol's crossfit linear cMAP is 0.47 fitted with the static protocol, 0.50 member by
# member, 0.53 alone). The linear attacker is compared on the train-then-score fit.
SUITES = {"crossfit": dict(attackers=("mlp", "mlp_deep", "knn"), crossfit_folds=2),
          "train-fit": dict(attackers=("linear", "mlp", "mlp_deep", "knn"), crossfit_folds=0)}


@pytest.mark.parametrize("suite", list(SUITES))
def test_a_stacks_members_measured_together_get_their_numbers_alone(small_cache, suite):
    """Stack members' attacker suites fitted in one go (``evaluate_features_many``) against
    each member's own ``evaluate_features``: both protocols, the intervals, every attacker;
    within CMAP_TOLERANCE (float rounding of matmuls over more members)."""
    from aam_search.trainer.baseline import evaluate_features, evaluate_features_many
    from aam_search.trainer.config import EvalConfig

    config = EvalConfig(protocols=("static", "clip"), attacker_epochs=3, probe_epochs=3, bootstrap_resamples=50,
                        **SUITES[suite])
    transforms = [_mixing(small_cache.dim, 1), None, _mixing(small_cache.dim, 2)]
    together = evaluate_features_many(small_cache, transforms, config, seed=3)
    alone = [evaluate_features(small_cache, transform, config, seed=3) for transform in transforms]
    assert len(together) == len(transforms)
    for mine, theirs in zip(together, alone):
        assert set(mine["privacy"]) == set(theirs["privacy"]) == {"static", "clip"}
        numbers, reference = _numbers(mine), _numbers(theirs)
        assert set(numbers) == set(reference) and len(reference) > 10
        for name, value in reference.items():
            assert numbers[name] == pytest.approx(value, abs=CMAP_TOLERANCE), name
    # The members really differ: a joint fit that mixed them up could not pass the loop above.
    assert _numbers(alone[0]) != _numbers(alone[1])
