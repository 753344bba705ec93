import math

import pytest
import torch

from aam_search.trainer.losses import (
    LossWeights,
    latent_consistency,
    normalized_hsic,
    masked_nt_xent,
    nt_xent,
    task_loss,
    total_loss,
)


def _neg_log_softmax(positive: float, others: list[float]) -> float:
    return -(positive - math.log(math.exp(positive) + sum(math.exp(o) for o in others)))


# ---------------------------------------------------------------- nt_xent


def test_nt_xent_matches_hand_computation():
    # Unnormalised rows on purpose: nt_xent must L2-normalise them.
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z2 = torch.tensor([[0.6, 0.8], [-0.8, 0.6]])
    tau = 0.5
    # Unit vectors v0=(1,0) v1=(0,1) v2=(.6,.8) v3=(-.8,.6); cosines by hand:
    # v0.v1=0  v0.v2=.6  v0.v3=-.8  v1.v2=.8  v1.v3=.6  v2.v3=0. Positives: (0,2), (1,3).
    s = 1 / tau
    per_anchor = [
        _neg_log_softmax(0.6 * s, [0.0 * s, -0.8 * s]),  # anchor v0: pos v2, neg v1, v3
        _neg_log_softmax(0.6 * s, [0.0 * s, 0.8 * s]),  # anchor v1: pos v3, neg v0, v2
        _neg_log_softmax(0.6 * s, [0.8 * s, 0.0 * s]),  # anchor v2: pos v0, neg v1, v3
        _neg_log_softmax(0.6 * s, [-0.8 * s, 0.0 * s]),  # anchor v3: pos v1, neg v0, v2
    ]
    expected = sum(per_anchor) / 4
    assert nt_xent(z1, z2, temperature=tau).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_aligned_is_low_and_swapped_positives_high():
    eye = torch.eye(4)
    aligned = nt_xent(eye, eye, temperature=0.1)
    # Each anchor: positive cosine 1, six orthogonal negatives at 0.
    assert aligned.item() == pytest.approx(_neg_log_softmax(10.0, [0.0] * 6), abs=1e-6)
    swapped = nt_xent(eye, eye.roll(1, dims=0), temperature=0.1)
    assert aligned.item() < 1e-3
    assert swapped.item() > 5.0


def test_nt_xent_symmetric_scale_invariant_and_temperature_sensitive():
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=generator)
    z2 = torch.randn(6, 5, generator=generator)
    base = nt_xent(z1, z2)
    torch.testing.assert_close(nt_xent(z2, z1), base)
    scales = torch.tensor([[0.1], [3.0], [7.0], [0.5], [1.0], [20.0]])
    torch.testing.assert_close(nt_xent(z1 * scales, z2 * scales.flip(0)), base)
    assert abs(nt_xent(z1, z2, temperature=1.0).item() - base.item()) > 1e-2


def test_nt_xent_rejects_bad_inputs():
    with pytest.raises(ValueError, match="batch >= 2"):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="equal shape"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)


def test_nt_xent_gradient_is_finite_despite_masked_diagonal():
    z1 = torch.randn(4, 3, requires_grad=True)
    nt_xent(z1, torch.randn(4, 3)).backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


# ---------------------------------------------------------------- latent consistency


def test_latent_consistency_is_elementwise_mse_and_never_moves_the_target():
    raw = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)
    adapted = torch.tensor([[[1.0, 0.0], [3.0, 7.0]]], requires_grad=True)
    loss = latent_consistency(adapted, raw)
    assert loss.item() == pytest.approx((0 + 4 + 0 + 9) / 4)
    loss.backward()
    assert adapted.grad is not None and raw.grad is None
    assert latent_consistency(raw, raw).item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        latent_consistency(torch.zeros(2, 3, 4), torch.zeros(2, 1, 4))


# ---------------------------------------------------------------- task loss


def test_task_loss_ignores_unlabelled_rows():
    logits = torch.tensor([[2.0, 0.0], [9.0, -9.0], [0.5, 1.5]], requires_grad=True)
    targets = torch.tensor([0, -1, 1])
    total, per_task = task_loss({"action": logits}, {"action": targets})
    expected = (_neg_log_softmax(2.0, [0.0]) + _neg_log_softmax(1.5, [0.5])) / 2
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert per_task["action"].item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert logits.grad[1].abs().sum() == 0  # the unlabelled row gets no gradient
    assert logits.grad[0].abs().sum() > 0


def test_task_loss_all_unlabelled_is_zero_and_backpropagates():
    logits = torch.randn(4, 3, requires_grad=True)
    total, per_task = task_loss({"task:scene": logits}, {"task:scene": torch.full((4,), -1)})
    assert torch.isfinite(total) and total.item() == 0.0
    assert per_task["task:scene"].item() == 0.0
    total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_task_loss_weights_sum_tasks():
    action = torch.tensor([[1.0, 0.0]])
    scene = torch.tensor([[0.0, 2.0, 0.0]])
    targets = {"action": torch.tensor([0]), "task:scene": torch.tensor([2])}
    logits = {"action": action, "task:scene": scene}
    _, per_task = task_loss(logits, targets)
    total, _ = task_loss(logits, targets, weights={"task:scene": 3.0})
    assert per_task["action"].item() == pytest.approx(_neg_log_softmax(1.0, [0.0]), rel=1e-5)
    assert per_task["task:scene"].item() == pytest.approx(_neg_log_softmax(0.0, [0.0, 2.0]), rel=1e-5)
    assert total.item() == pytest.approx(per_task["action"].item() + 3 * per_task["task:scene"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown tasks"):
        task_loss(logits, targets, weights={"acton": 1.0})
    with pytest.raises(KeyError, match="task:scene"):
        task_loss(logits, {"action": targets["action"]})


# ---------------------------------------------------------------- total loss


def test_total_loss_maximises_privacy_term():
    weights = LossWeights()
    lc, task = torch.tensor(0.5), torch.tensor(2.0)
    low = total_loss(lc, task, torch.tensor(1.0), weights)
    high = total_loss(lc, task, torch.tensor(3.0), weights)
    assert high.item() < low.item()  # a larger L_B lowers the total
    assert low.item() == pytest.approx(100 * 0.5 + 2.0 - 1.0)
    custom = total_loss(lc, task, torch.tensor(1.0), LossWeights(lc=0.0, task=2.0, privacy=0.5))
    assert custom.item() == pytest.approx(4.0 - 0.5)
    with pytest.raises(ValueError, match="privacy"):
        LossWeights(privacy=-1.0)


# ---------------------------------------------------------------- normalized_hsic


def _labelled(n: int = 64, attrs: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, attrs, generator=g) > 0.5).long()
    noise = torch.randn(n, 8, generator=g)
    return labels, noise


def test_hsic_is_high_for_dependent_and_low_for_independent_features():
    labels, noise = _labelled()
    dependent = torch.cat([labels.float() * 3, torch.zeros(len(labels), 6)], 1) + 0.1 * noise
    high = normalized_hsic(dependent, labels)
    low = normalized_hsic(noise, labels)
    assert 0 <= low < 0.1 < 0.5 < high <= 1 + 1e-6


def test_hsic_is_scale_invariant_through_the_median_bandwidth():
    labels, noise = _labelled()
    features = noise + labels[:, :1].float()
    assert normalized_hsic(features * 100, labels).item() == pytest.approx(normalized_hsic(features, labels).item(),
                                                                           rel=1e-4)


def test_rows_without_labels_contribute_nothing():
    labels, noise = _labelled()
    features = noise + labels[:, :1].float()
    extra = torch.randn(20, 8) * 5
    unlabelled = torch.full((20, 2), -1)
    alone = normalized_hsic(features, labels)
    mixed = normalized_hsic(torch.cat([features, extra]), torch.cat([labels, unlabelled]))
    assert mixed.item() == pytest.approx(alone.item(), rel=1e-5)


def test_an_unknown_entry_adds_nothing_to_its_attribute():
    labels, noise = _labelled()
    features = noise + 2 * labels[:, :1].float()  # only attribute 0 is encoded
    hidden = labels.clone()
    hidden[:10, 1] = -1  # unknown values of the unencoded attribute
    assert normalized_hsic(features, hidden).item() == pytest.approx(normalized_hsic(features, labels).item(),
                                                                     abs=0.05)


def test_conditioning_on_the_group_ignores_what_the_group_explains():
    g = torch.Generator().manual_seed(1)
    groups = torch.randint(0, 4, (80,), generator=g)
    labels = (groups % 2).unsqueeze(1)  # the attribute IS a function of the group (the action)
    features = torch.nn.functional.one_hot(groups, 4).float() + 0.05 * torch.randn(80, 4, generator=g)
    assert normalized_hsic(features, labels) > 0.3
    assert normalized_hsic(features, labels, groups).item() < 0.05
    # Rows of unknown group are centred globally, as without conditioning.
    unknown = torch.full_like(groups, -1)
    assert normalized_hsic(features, labels, unknown).item() == pytest.approx(
        normalized_hsic(features, labels).item(), rel=1e-5)


def test_hsic_on_too_few_rows_is_zero_and_backpropagates():
    features = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([[1], [0], [1], [-1], [-1]])
    value = normalized_hsic(features, labels)
    assert value.item() == 0.0
    value.backward()
    assert features.grad is not None


def test_hsic_gradient_is_finite_with_duplicate_rows():
    labels, noise = _labelled(16)
    features = torch.cat([noise[:8], noise[:8]]).requires_grad_()  # zero distances off the diagonal
    normalized_hsic(features, labels).backward()
    assert torch.isfinite(features.grad).all()


def test_total_loss_adds_the_weighted_hsic_term():
    one = torch.tensor(1.0)
    weights = LossWeights(lc=2.0, task=3.0, privacy=4.0, hsic=5.0)
    assert total_loss(one, one, one, weights, l_hsic=torch.tensor(0.5)).item() == pytest.approx(2 + 3 - 4 + 2.5)
    assert total_loss(one, one, one, weights).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hsic"):
        LossWeights(hsic=-1.0)


# ---------------------------------------------------------------- masked_nt_xent


def _boolean_indexed_nt_xent(z1, z2, mask, temperature):
    """The objective's former L_B: boolean-mask indexing, 0 below two pairs."""
    if int(mask.sum()) < 2:
        return (z1.sum() + z2.sum()) * 0.0
    return nt_xent(z1[mask], z2[mask], temperature)


@pytest.mark.parametrize("kept", ["random", "none", "one", "all"])
def test_masked_nt_xent_equals_the_boolean_indexed_loss(kept):
    generator = torch.Generator().manual_seed(7)
    for trial in range(20):
        batch = 2 + trial % 9
        z1 = torch.randn(batch, 5, generator=generator, dtype=torch.float64, requires_grad=True)
        z2 = torch.randn(batch, 5, generator=generator, dtype=torch.float64, requires_grad=True)
        mask = {"random": torch.rand(batch, generator=generator) < 0.6, "none": torch.zeros(batch, dtype=torch.bool),
                "one": torch.arange(batch) == trial % batch, "all": torch.ones(batch, dtype=torch.bool)}[kept]
        tau = 0.05 + 0.1 * (trial % 4)
        expected = _boolean_indexed_nt_xent(z1, z2, mask, tau)
        got = masked_nt_xent(z1, z2, mask, tau)
        assert torch.isfinite(got)
        assert abs(float(got.detach()) - float(expected.detach())) < 1e-6, (trial, kept)
        grads = torch.autograd.grad(got, (z1, z2))
        want = torch.autograd.grad(expected, (z1, z2), allow_unused=True)
        for g, w in zip(grads, want):
            torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w, atol=1e-6, rtol=1e-6)


def test_masked_nt_xent_in_float32_matches_within_1e_6():
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(64, 16, generator=generator), torch.randn(64, 16, generator=generator)
    mask = torch.rand(64, generator=generator) < 0.5
    assert abs(float(masked_nt_xent(z1, z2, mask, 0.1)) - float(nt_xent(z1[mask], z2[mask], 0.1))) < 1e-6


def test_masked_nt_xent_rejects_bad_inputs():
    with pytest.raises(ValueError, match="mask"):
        masked_nt_xent(torch.randn(3, 4), torch.randn(3, 4), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        masked_nt_xent(torch.randn(3, 4), torch.randn(3, 4), torch.ones(3, dtype=torch.bool), temperature=0.0)


def test_normalized_hsic_gradient_is_finite_when_the_labels_do_not_vary():
    features = torch.randn(8, 4, requires_grad=True)
    labels = torch.ones(8, 2)  # centred to zero: no dependence, and no NaN through the root
    value = normalized_hsic(features, labels)
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(features.grad).all()


def _indexed_hsic(features, labels, groups=None, num_groups=None):
    """normalized_hsic as it was: labelled rows indexed out on the host (one sync each)."""
    from aam_search.trainer.losses import _residualise

    known = labels >= 0
    rows = known.any(dim=1)
    x = features.double()[rows]
    if len(x) < 4:
        return 0.0
    mask = known[rows].double()
    y = labels[rows].double() * mask
    y = y + (1 - mask) * (y.sum(0) / mask.sum(0).clamp_min(1))
    if groups is not None:
        y = _residualise(y, groups[rows], num_groups)
    y = y - y.mean(0)
    gram_y = y @ y.T
    squared = x.pow(2).sum(1)
    dist = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp_min(0)
    off = ~torch.eye(len(x), dtype=torch.bool)
    kernel = torch.exp(-dist / (2 * dist[off].median().clamp_min(1e-12)))
    kernel = kernel - kernel.mean(0, keepdim=True)
    kernel = kernel - kernel.mean(1, keepdim=True)
    scale = torch.sqrt(((kernel * kernel).sum() * (gram_y * gram_y).sum()).clamp_min(1e-24))
    return float((kernel * gram_y).sum() / scale)


def test_normalized_hsic_without_indexing_matches_the_indexed_one():
    generator = torch.Generator().manual_seed(11)
    for trial in range(30):
        n = 3 + trial % 10
        features = torch.randn(n, 6, generator=generator, dtype=torch.float64)
        labels = torch.randint(-1, 2, (n, 3), generator=generator)
        if trial % 3 == 0:
            labels[: n // 2] = -1  # whole rows without a label
        groups = torch.randint(-1, 3, (n,), generator=generator) if trial % 2 else None
        got = float(normalized_hsic(features, labels, groups, 3 if groups is not None else None))
        assert got == pytest.approx(_indexed_hsic(features, labels, groups, 3), abs=1e-6), trial
