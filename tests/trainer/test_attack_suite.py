"""The attacker suite, cross-fitting by video, and the per-video bootstrap."""

import sys

import numpy as np
import pytest
import torch

import aam_search.trainer.attackers as attackers
from aam_search.trainer.attackers import ATTACKER_KINDS, make_attacker, train_members
from aam_search.trainer.evaluation import attack, average_precision
from aam_search.trainer.feature_eval import _crossfit_masks, measure_protocol, within_fold_ranks
from aam_search.trainer.resampling import (
    MIN_BOOTSTRAP_VIDEOS,
    Resampler,
    enough_videos,
    percentile_ci,
    video_folds,
    weighted_average_precision,
)


@pytest.fixture(autouse=True)
def _few_steps(monkeypatch):
    """Small problems converge long before the production floor of steps."""
    monkeypatch.setattr(attackers, "MIN_STEPS", 300)


def _xor_rows(videos: int, rows_per_video: int, seed: int, dim: int = 4):
    """Attribute 0 is "far from zero along x0" (``|x0| > 0.674``, half the videos): symmetric, so
    no linear attacker can read it, while a ReLU unit pair or a neighbour can; attribute 1 is noise.

    Rows of one video share its attributes and nearly its features, as clips of one video do.
    """
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(videos, dim, generator=g)
    xor = (centre[:, 0].abs() > 0.674).long()
    noise_attr = (torch.rand(videos, generator=g) < 0.5).long()
    owner = torch.arange(videos).repeat_interleave(rows_per_video)
    x = centre[owner] + 0.05 * torch.randn(len(owner), dim, generator=g)
    return x, torch.stack([xor, noise_attr], 1)[owner], owner


def _protocol_data(train_videos: int, eval_videos: int, rows: int = 2, seed: int = 0):
    x_train, a_train, o_train = _xor_rows(train_videos, rows, seed)
    x_eval, a_eval, o_eval = _xor_rows(eval_videos, rows, seed + 1)
    o_eval = o_eval + train_videos  # distinct video ids, as in a cache
    return torch.cat([x_train, x_eval]), torch.cat([a_train, a_eval]), torch.cat([o_train, o_eval]), len(x_train)


# ---------------------------------------------------------------- the suite


def test_suite_kinds_and_shapes():
    assert ATTACKER_KINDS == ("linear", "mlp", "mlp_deep", "knn")
    paper = make_attacker("mlp", 8, 3)
    assert [type(m).__name__ for m in paper] == ["Linear", "ReLU", "Linear"]
    assert (paper[0].in_features, paper[0].out_features, paper[2].out_features) == (8, 8, 3)
    deep = make_attacker("mlp_deep", 8, 3)
    linears = [m for m in deep if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(m.out_features == 16 for m in linears[:-1])  # deeper and wider
    with pytest.raises(ValueError, match="attacker"):
        make_attacker("forest", 8, 3)


def test_only_nonlinear_attackers_read_a_symmetric_attribute_and_the_strongest_counts():
    x, attrs, owner, n_train = _protocol_data(160, 60)
    out, _ = measure_protocol(x, attrs, owner, n_train, ["ring", "noise"], kinds=ATTACKER_KINDS, folds=0,
                              epochs=1, seed=0, knn_k=None, resampler=None)
    assert set(out["attackers"]) == set(ATTACKER_KINDS)
    per_kind = {
        kind: attack(x[:n_train], attrs[:n_train], x[n_train:], attrs[n_train:], ["ring", "noise"], kind=kind,
                     epochs=1, train_video=owner[:n_train]).per_attribute["ring"]
        for kind in ATTACKER_KINDS
    }
    # The linear attacker stays at chance on the symmetric attribute; the deeper and wider MLP
    # and the kNN find it (the paper's MLP, only d = 4 units wide here, finds part of it).
    assert per_kind["linear"] < 0.65
    assert per_kind["mlp_deep"] > 0.9 and per_kind["knn"] > 0.85
    # The leakage is the strongest attacker's, far above what the linear one alone would say.
    assert out["strongest"] in ("mlp_deep", "knn")
    assert out["cmap"] == max(out["attackers"].values()) == out["cmap_train"]
    assert out["cmap"] > out["attackers"]["linear"] + 0.15


def test_mlp_training_never_reads_values_back_to_the_host(monkeypatch):
    """No per-step ``.item()`` / ``float(tensor)`` / ``bool(tensor)`` in the loop: it must run on a GPU
    without a device sync per step. (AdamW reads its own CPU-side step counters; that is no sync.)"""
    calls = []

    def spy(real):
        def wrapper(self):
            if sys._getframe(1).f_code.co_filename == attackers.__file__:
                calls.append(sys._getframe(1).f_lineno)
            return real(self)
        return wrapper

    for name in ("item", "__float__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, spy(getattr(torch.Tensor, name)))
    x, attrs, _ = _xor_rows(40, 2, seed=0)
    train_members(x, attrs, torch.ones(2, len(x), dtype=torch.bool), ("mlp", "mlp_deep"), epochs=1, lr=1e-3,
                  batch_size=16, seed=0)
    assert calls == []


def test_linear_attacker_reaches_its_optimum():
    """L-BFGS on the convex loss: gradient ~0 at the end, for every member at once."""
    x, attrs, _ = _xor_rows(50, 2, seed=1)
    attrs = attrs.clone()
    attrs[::7, 1] = -1  # unknown labels take no part
    train = torch.stack([torch.arange(len(x)) % 2 == 0, torch.ones(len(x), dtype=torch.bool)])
    model, mean, std = train_members(x, attrs, train, ("linear",), epochs=1, lr=1e-3, batch_size=16, seed=0)["linear"]
    inputs = (x[None] - mean) / std
    weight = (attrs >= 0)[None].float() * train[..., None].float()
    model.zero_grad()
    losses = torch.nn.functional.binary_cross_entropy_with_logits(
        model(inputs), attrs.clamp_min(0).float()[None].expand(2, -1, -1), reduction="none")
    loss = ((losses * weight).sum((1, 2)) / weight.sum((1, 2))).sum()
    (loss + 0.5 * attackers.LINEAR_L2 * model.weights[0].pow(2).sum()).backward()
    assert max(float(p.grad.abs().max()) for p in model.parameters()) < 1e-4


# ---------------------------------------------------------------- cross-fitting


def test_folds_are_disjoint_balanced_and_stratified():
    videos = np.arange(100, 153)
    strata = np.stack([np.arange(53) % 2, (np.arange(53) // 2) % 2], 1)
    folds = video_folds(videos, strata, 5, seed=0)
    assert folds.shape == (53,) and set(folds) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1  # every video in exactly one fold, folds about equal
    for value in (0, 1):  # each label spread over the folds
        per_fold = np.bincount(folds[strata[:, 0] == value], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert not np.array_equal(folds, video_folds(videos, strata, 5, seed=1))
    with pytest.raises(ValueError, match="folds"):
        video_folds(videos[:3], strata[:3], 5, seed=0)


def test_crossfit_masks_keep_each_video_in_one_fold():
    videos = np.array([3, 5, 8, 9, 12, 20])
    owner = np.array([3, 3, 5, 8, 8, 8, 9, 12, 20, 20, 5])  # rows, videos interleaved
    fold, masks = _crossfit_masks(videos, np.zeros((6, 1)), owner, 3, seed=0)
    assert masks.shape == (3, len(owner))
    for video in videos:
        assert len(set(fold[owner == video])) == 1  # a video's rows share a fold
    for k in range(3):
        # Member k trains on every row outside fold k and on none inside it.
        assert torch.equal(masks[k], torch.from_numpy(fold != k))


def test_crossfit_splits_by_video_not_by_row():
    """Identical rows per video and random labels: a fold that split a video would let a
    1-NN attacker find the twin of each row (AP ~1); by video it stays near chance."""
    g = torch.Generator().manual_seed(0)
    videos, rows = 60, 3
    owner = torch.arange(videos).repeat_interleave(rows) + 1000
    x = torch.randn(videos, 8, generator=g)[owner - 1000]
    attrs = (torch.rand(videos, 2, generator=g) < 0.5).long()[owner - 1000]
    out, _ = measure_protocol(torch.cat([x[:3], x]), torch.cat([attrs[:3], attrs]),
                              torch.cat([torch.tensor([0, 0, 1]), owner]), 3, ["a", "b"], kinds=("knn",),
                              folds=5, epochs=1, seed=0, knn_k=1, resampler=None)
    assert out["crossfit_folds"] == 5
    assert out["attackers_crossfit"]["knn"] < 0.75


def test_crossfit_fit_is_reported_and_can_be_the_strongest():
    # The train split's features carry nothing (another world); the evaluation split's carry
    # the attribute along x0: only attackers that learn on the evaluation split find it.
    g = torch.Generator().manual_seed(4)
    x_train, x_eval = torch.randn(120, 4, generator=g), torch.randn(60, 4, generator=g)
    a_train = (torch.rand(120, 2, generator=g) < 0.5).long()
    a_eval = torch.stack([(x_eval[:, 0] > 0).long(), (torch.rand(60, generator=g) < 0.5).long()], 1)
    owner = torch.arange(180)
    out, _ = measure_protocol(torch.cat([x_train, x_eval]), torch.cat([a_train, a_eval]), owner, 120, ["a", "noise"],
                              kinds=("linear", "knn"), folds=5, epochs=1, seed=0, knn_k=None, resampler=None)
    assert set(out["attackers_crossfit"]) == {"linear", "knn"}
    assert out["per_attribute_by_attacker"]["crossfit"]["linear"]["a"] > 0.9
    assert out["cmap_crossfit"] > out["cmap_train"] + 0.1
    assert out["strongest_fit"] == "crossfit" and out["cmap"] == out["cmap_crossfit"]
    assert len(out["knn_k"]["crossfit"]) == 5 and isinstance(out["knn_k"]["train"], int)


# ---------------------------------------------------------------- bootstrap


def test_weighted_average_precision_is_ap_of_the_repeated_rows():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(30), 1)  # ties included
    labels = rng.random(30) < 0.4
    weights = rng.integers(0, 4, size=(5, 30))
    got = weighted_average_precision(scores, labels, weights)
    for row, value in zip(weights, got):
        expanded = np.repeat(np.arange(30), row)
        assert value == pytest.approx(average_precision(scores[expanded], labels[expanded]))
    ones = weighted_average_precision(scores, labels, np.ones((1, 30)))[0]
    assert ones == pytest.approx(average_precision(scores, labels))


def test_resampler_weights_follow_videos():
    resampler = Resampler.draw(np.array([7, 3, 9]), resamples=200, seed=0)
    assert resampler.counts.shape == (200, 3) and (resampler.counts.sum(1) == 3).all()
    weights = resampler.weights(np.array([3, 3, 9, 4]))  # video 4 is not in the draw
    assert np.array_equal(weights[:, 0], weights[:, 1])  # rows of one video go together
    assert np.array_equal(weights[:, 0], resampler.counts[:, 0]) and (weights[:, 3] == 0).all()
    again = Resampler.draw(np.array([3, 7, 9]), resamples=200, seed=0)
    assert np.array_equal(again.counts, resampler.counts)  # fixed seed: one draw for everyone


def _accuracy_ci(videos: int) -> tuple[float, list[float]]:
    rng = np.random.default_rng(videos)
    correct = (rng.random(videos) < 0.7).astype(float)
    resampler = Resampler.draw(np.arange(videos), resamples=1000, seed=0)
    weights = resampler.weights(np.arange(videos))
    draws = (weights * correct).sum(1) / weights.sum(1)
    return float(correct.mean()), percentile_ci(draws)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_videos():
    small_point, (small_lo, small_hi) = _accuracy_ci(40)
    large_point, (large_lo, large_hi) = _accuracy_ci(640)
    assert small_lo <= small_point <= small_hi and large_lo <= large_point <= large_hi
    # The width falls about as 1/sqrt(videos): 16x the videos, about a quarter of the width.
    assert (large_hi - large_lo) < 0.4 * (small_hi - small_lo)


def test_leakage_interval_contains_its_estimate():
    x, attrs, owner, n_train = _protocol_data(80, 40)
    resampler = Resampler.draw(np.unique(owner[n_train:].numpy()), resamples=300, seed=0)
    out, draws = measure_protocol(x, attrs, owner, n_train, ["xor", "noise"], kinds=("linear", "knn"), folds=4,
                                  epochs=10, seed=0, knn_k=None, resampler=resampler)
    assert draws.shape == (300,)
    lo, hi = out["ci"]
    assert lo <= out["cmap"] <= hi
    for fit in ("train", "crossfit"):
        assert out[f"ci_{fit}"][0] <= out[f"cmap_{fit}"] <= out[f"ci_{fit}"][1]


def test_too_few_videos_give_a_note_instead_of_an_interval():
    assert enough_videos(MIN_BOOTSTRAP_VIDEOS) is None
    assert "9 evaluation videos" in enough_videos(9)
    x, attrs, owner, n_train = _protocol_data(40, 9)
    resampler = Resampler.draw(np.unique(owner[n_train:].numpy()), resamples=100, seed=0)
    out, draws = measure_protocol(x, attrs, owner, n_train, ["xor", "noise"], kinds=("linear",), folds=3,
                                  epochs=5, seed=0, knn_k=None, resampler=resampler)
    assert draws is None and out["ci"] is None and "< 10" in out["ci_note"]


def test_fold_models_base_rates_do_not_pose_as_leakage():
    """Constant features: each fold's model can only output its training base rate. Pooled raw,
    those rates would order whole folds; as within-fold ranks everything ties (no leakage)."""
    g = torch.Generator().manual_seed(0)
    videos = 40
    owner = torch.arange(videos) + 100
    attrs = (torch.rand(videos, 2, generator=g) < 0.5).long()
    x = torch.zeros(videos + 10, 4)
    labels = torch.cat([attrs[:10], attrs])
    out, _ = measure_protocol(x, labels, torch.cat([torch.arange(10), owner]), 10, ["a", "b"],
                              kinds=("linear", "mlp"), folds=5, epochs=1, seed=0, knn_k=None, resampler=None)
    assert out["cmap_crossfit"] <= out["chance"] + 1e-9
    scores = np.array([[0.2, 1.0], [0.2, 3.0], [0.9, 2.0], [0.5, 0.5]])
    ranks = within_fold_ranks(scores, np.array([0, 0, 1, 1]))
    assert ranks[:, 0].tolist() == [0.5, 0.5, 0.75, 0.25] and ranks[:, 1].tolist() == [0.25, 0.75, 0.75, 0.25]
    # All tied: the same value whatever the fold's size, so unequal folds do not order rows.
    assert set(within_fold_ranks(np.zeros((5, 1)), np.array([0, 0, 1, 1, 1]))[:, 0]) == {0.5}
