"""Honest evaluation: AP/cMAP, fresh attackers, per-video linear probes, and the cache-level protocols."""

import math

import numpy as np
import pytest
import torch

import aam_search.trainer.suite_fit as suite_fit
from aam_search.trainer.evaluation import attack, average_precision, linear_probe
from aam_search.trainer.feature_eval import ATTACKERS, evaluate_privacy, evaluate_utility, pooled


# ---------------------------------------------------------------- average precision


def test_average_precision_hand_example():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([1, 0, 1, 0])
    # Positives at ranks 1 and 3: precisions 1/1 and 2/3.
    assert average_precision(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_average_precision_does_not_depend_on_input_order():
    scores = np.array([0.6, 0.9, 0.7, 0.8])
    labels = np.array([0, 1, 1, 0])
    assert average_precision(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_average_precision_perfect_and_worst():
    assert average_precision(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == 1.0
    # Positives last: precisions 1/3 and 2/4.
    worst = average_precision(np.array([3.0, 2.0, 1.0, 0.0]), np.array([0, 0, 1, 1]))
    assert worst == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_average_precision_ties_get_no_credit():
    # A positive tied with a negative is ranked after it.
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(1 / 2)
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(1 / 2)
    # Constant scores: positives after all negatives, never better than chance.
    labels = np.array([0, 1, 0, 0])
    assert average_precision(np.zeros(4), labels) == pytest.approx(1 / 4)
    labels = np.array([1, 0, 1, 0, 0])
    ap = average_precision(np.ones(5), labels)
    assert ap == pytest.approx((1 / 4 + 2 / 5) / 2)
    assert ap < labels.mean()
    # A tie among positives only costs nothing.
    assert average_precision(np.array([0.9, 0.9, 0.1]), np.array([1, 1, 0])) == 1.0


def test_average_precision_without_positives_is_nan():
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


# ---------------------------------------------------------------- attackers

NAMES = ["visible", "hidden"]


def _attribute_data(count: int, seed: int, dim: int = 12):
    """Two attributes with different positive rates; only ``visible`` is written into the features."""
    g = torch.Generator().manual_seed(seed)
    attrs = torch.stack(
        [(torch.rand(count, generator=g) < 0.5).long(), (torch.rand(count, generator=g) < 0.3).long()], dim=1
    )
    x = torch.randn(count, dim, generator=g)
    x[:, 0] = attrs[:, 0].float() + 0.1 * torch.randn(count, generator=g)
    return x, attrs


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_attacker_finds_an_attribute_written_into_the_features(kind):
    train_x, train_a = _attribute_data(300, seed=0)
    eval_x, eval_a = _attribute_data(200, seed=1)
    result = attack(train_x, train_a, eval_x, eval_a, NAMES, kind=kind, epochs=10, seed=0)
    assert result.attacker == kind
    assert result.per_attribute["visible"] > 0.97
    # The hidden attribute is independent of the features: its AP stays near its positive rate.
    hidden_rate = float(eval_a[:, 1].float().mean())
    assert result.chance_per_attribute["hidden"] == pytest.approx(hidden_rate)
    assert abs(result.per_attribute["hidden"] - hidden_rate) < 0.15
    assert result.cmap == pytest.approx(np.mean(list(result.per_attribute.values())))
    assert result.chance == pytest.approx(np.mean([float(eval_a[:, 0].float().mean()), hidden_rate]))
    assert (result.train_samples, result.eval_samples) == (300, 200)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_attacker_on_shuffled_labels_is_at_chance(kind):
    train_x, train_a = _attribute_data(300, seed=0)
    eval_x, eval_a = _attribute_data(200, seed=1)
    g = torch.Generator().manual_seed(5)
    shuffled_train = train_a[torch.randperm(len(train_a), generator=g)]
    shuffled_eval = eval_a[torch.randperm(len(eval_a), generator=g)]
    result = attack(train_x, shuffled_train, eval_x, shuffled_eval, NAMES, kind=kind, epochs=10, seed=0)
    assert abs(result.cmap - result.chance) < 0.1
    assert result.per_attribute["visible"] < 0.7


def test_unknown_labels_take_no_part():
    """-1 = not labelled: such rows neither train the attacker nor count as negatives."""
    train_x, train_a = _attribute_data(300, seed=0)
    eval_x, eval_a = _attribute_data(200, seed=1)
    # Unlabelled training rows that look like positives of `visible` but would teach "negative"
    # if -1 were read as 0.
    train_a = train_a.clone()
    unknown_train = torch.arange(300) % 3 == 0
    train_x[unknown_train, 0] = 1.0
    train_a[unknown_train, 0] = -1
    # Unlabelled evaluation rows that score highest; as negatives they would ruin the AP.
    eval_a = eval_a.clone()
    unknown_eval = torch.arange(200) % 4 == 0
    eval_x[unknown_eval, 0] = 5.0
    eval_a[unknown_eval, 0] = -1
    result = attack(train_x, train_a, eval_x, eval_a, NAMES, kind="linear", epochs=10, seed=0)
    assert result.per_attribute["visible"] > 0.97
    kept = eval_a[~unknown_eval, 0].float()
    assert result.chance_per_attribute["visible"] == pytest.approx(float(kept.mean()))


def test_attribute_without_both_classes_is_skipped_and_all_missing_is_an_error():
    train_x, train_a = _attribute_data(100, seed=0)
    eval_x, eval_a = _attribute_data(50, seed=1)
    eval_a = eval_a.clone()
    eval_a[:, 1] = 0  # no positive in evaluation: AP undefined
    result = attack(train_x, train_a, eval_x, eval_a, NAMES, kind="linear", epochs=2, seed=0)
    assert set(result.per_attribute) == {"visible"}
    eval_a[:, 0] = 1
    with pytest.raises(ValueError, match="both positive and negative"):
        attack(train_x, train_a, eval_x, eval_a, NAMES, kind="linear", epochs=2, seed=0)


def test_attacker_is_reproducible_and_fresh():
    train_x, train_a = _attribute_data(120, seed=0)
    eval_x, eval_a = _attribute_data(80, seed=1)
    first = attack(train_x, train_a, eval_x, eval_a, NAMES, kind="mlp", epochs=3, seed=4)
    # Global RNG state left by other code must not matter: the attacker seeds itself.
    torch.manual_seed(12345)
    torch.rand(100)
    second = attack(train_x, train_a, eval_x, eval_a, NAMES, kind="mlp", epochs=3, seed=4)
    assert first.per_attribute == second.per_attribute


def test_unknown_attacker_kind():
    x, a = _attribute_data(20, seed=0)
    with pytest.raises(ValueError, match="attacker"):
        attack(x, a, x, a, NAMES, kind="forest", epochs=1)


# ---------------------------------------------------------------- linear probe


def _two_class_train(count: int = 200, dim: int = 8, seed: int = 0):
    """Class 0 around x = -1, class 1 around x = +1 along every dimension."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % 2
    x = (2.0 * y.float() - 1.0)[:, None] + 0.3 * torch.randn(count, dim, generator=g)
    return x, y


def test_probe_decides_each_video_by_its_summed_logits():
    train_x, train_y = _two_class_train()
    dim = train_x.shape[1]
    # Video 10 (class 1): two clips lean weakly to class 0, one clip strongly to class 1.
    # Video 20 (class 0): the mirror image. A per-clip majority vote gets both wrong;
    # summed logits get both right.
    along = torch.tensor([-0.2, -0.2, 3.0, 0.2, 0.2, -3.0])
    eval_x = along[:, None] * torch.ones(1, dim)
    eval_y = torch.tensor([1, 1, 1, 0, 0, 0])
    eval_video = torch.tensor([10, 10, 10, 20, 20, 20])
    result = linear_probe(train_x, train_y, eval_x, eval_y, eval_video, 2, epochs=20, seed=0)
    assert result.eval_videos == 2
    assert result.train_clips == len(train_x)
    assert result.top1 == 1.0
    assert result.chance == 0.5


def test_probe_per_group_accuracy_and_chance():
    train_x, train_y = _two_class_train()
    dim = train_x.shape[1]
    # Three videos of two clips: 1 and 2 are clear and right, 3 (label 0) looks like class 1.
    along = torch.tensor([1.0, 1.2, -1.0, -0.8, 1.0, 0.9])
    eval_x = along[:, None] * torch.ones(1, dim)
    eval_y = torch.tensor([1, 1, 0, 0, 0, 0])
    eval_video = torch.tensor([1, 1, 2, 2, 3, 3])
    groups = torch.tensor([0, 0, 1, 1, 1, 1])
    result = linear_probe(train_x, train_y, eval_x, eval_y, eval_video, 2, eval_groups=groups,
                          group_names=["female", "male"], epochs=20, seed=0)
    assert result.top1 == pytest.approx(2 / 3)
    assert result.per_group == pytest.approx({"female": 1.0, "male": 0.5})
    assert result.chance == pytest.approx(2 / 3)  # always answering class 0
    assert result.to_dict()["per_group"] == result.per_group


def test_probe_clip_order_does_not_matter():
    train_x, train_y = _two_class_train()
    dim = train_x.shape[1]
    along = torch.tensor([-0.2, 3.0, 0.2, -0.2, -3.0, 0.2])
    eval_x = along[:, None] * torch.ones(1, dim)
    eval_y = torch.tensor([1, 1, 0, 1, 0, 0])
    eval_video = torch.tensor([7, 7, 3, 7, 3, 3])  # interleaved clips, unsorted video ids
    result = linear_probe(train_x, train_y, eval_x, eval_y, eval_video, 2, epochs=20, seed=0)
    assert result.eval_videos == 2 and result.top1 == 1.0


# ---------------------------------------------------------------- on the feature cache


def _owner_lookup(cache):
    """Map any cache token tensor back to its video (rows are matched exactly)."""
    rows = torch.cat([cache.static_features.float(), cache.clip_features.float()]).flatten(1)
    owners = torch.cat([cache.static_video, cache.clip_video]).long()

    def owner_of(tokens: torch.Tensor) -> torch.Tensor:
        same = (tokens.flatten(1)[:, None, :] == rows[None]).all(-1)
        assert bool(same.any(1).all()), "transform got tokens that are not cache rows"
        return owners[same.float().argmax(1)]

    return owner_of


def _leaky(cache, attribute: int):
    """A 'leaky adapter': wipes the features but writes one private attribute into a token dimension."""
    owner_of = _owner_lookup(cache)
    attrs = cache.labels("attrs").float()

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(tokens)
        out[:, 0, 0] = attrs[owner_of(tokens), attribute]
        return out

    return transform


def _noise(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda tokens: torch.randn(tokens.shape, generator=generator)


def test_leaky_adapter_is_caught_on_both_protocols(small_cache, monkeypatch):
    calls = []
    real_train = suite_fit.train_members

    def recording_train(x, labels, train, kinds, **kwargs):
        calls.append((len(x), train.sum(1).tolist()))
        return real_train(x, labels, train, kinds, **kwargs)

    monkeypatch.setattr(suite_fit, "train_members", recording_train)
    names = small_cache.meta["attr_names"]
    leaked = names[0]
    result = evaluate_privacy(small_cache, _leaky(small_cache, 0), "val", protocols=("static", "clip"),
                              seed=0, epochs=10)
    assert set(result) == {"static", "clip"}
    for protocol in ("static", "clip"):
        measured = result[protocol]
        # Every train-then-score attacker reads the written attribute perfectly (on a handful
        # of evaluation rows another attribute may be the strongest one's best by luck; the
        # cross-fit's fold models see two or three evaluation videos each here).
        by_attacker = measured["per_attribute_by_attacker"]
        assert set(by_attacker) == {"train", "crossfit"}
        for kind, per_attribute in by_attacker["train"].items():
            assert per_attribute[leaked] == pytest.approx(1.0), (protocol, kind)
        # A fresh attacker of each kind, on both fits; the protocol's leakage is the strongest.
        assert set(measured["attackers"]) == set(ATTACKERS) == set(measured["attackers_crossfit"])
        every = [*measured["attackers"].values(), *measured["attackers_crossfit"].values()]
        assert measured["cmap"] == max(every)
        assert measured["cmap_train"] == max(measured["attackers"].values())
        assert measured["cmap_crossfit"] == max(measured["attackers_crossfit"].values())
        fit = "attackers" if measured["strongest_fit"] == "train" else "attackers_crossfit"
        assert measured["cmap"] == measured[fit][measured["strongest"]]
        assert 0 < measured["chance"] < 1
        assert set(measured["per_attribute"]) <= set(names)
    # Protocols: images (one static clip each) count only in `static`; `clip` uses videos.
    is_image = small_cache.labels("is_image").numpy().astype(bool)
    expected = {}
    for protocol, owner in (("static", small_cache.static_video), ("clip", small_cache.clip_video)):
        sizes = []
        for split in ("train", "val"):
            videos = small_cache.video_indices(split, with_attrs=True)
            if protocol == "clip":
                videos = videos[~is_image[videos]]
            sizes.append(int(np.isin(owner.numpy(), videos).sum()))
        expected[protocol] = tuple(sizes)
    assert is_image[small_cache.video_indices("train", with_attrs=True)].any()  # the fixture has images
    # One fit for every member of both protocols (their rows side by side). Per protocol:
    # train-then-score (trained on the train rows), then the cross-fit's fold members, each
    # trained on the evaluation rows of the other folds.
    (rows, sizes), = calls
    assert rows == sum(n_train + n_eval for n_train, n_eval in expected.values())
    for protocol in ("static", "clip"):
        n_train, n_eval = expected[protocol]
        folds = result[protocol]["crossfit_folds"]
        assert folds >= 2
        members, sizes = sizes[: 1 + folds], sizes[1 + folds :]  # train-then-score, then the folds
        assert members[0] == n_train and all(0 < n < n_eval for n in members[1:])
        assert sum(n_eval - n for n in members[1:]) == n_eval  # each evaluation row scored once
    assert sizes == []
    assert expected["static"] != expected["clip"]


def test_wiped_features_leak_nothing(small_cache):
    result = evaluate_privacy(small_cache, torch.zeros_like, "val", protocols=("static",), seed=0, epochs=5)
    static = result["static"]
    # Constant features: every score ties, and ties get no credit -> at or below chance.
    assert static["cmap"] <= static["chance"] + 1e-9
    for name, ap in static["per_attribute"].items():
        assert ap < 1.0, name


def test_noise_features_leak_about_chance(small_cache):
    # A handful of evaluation rows: average a few independent noise draws and attacker seeds.
    results = [
        evaluate_privacy(small_cache, _noise(seed), "val", protocols=("static",), seed=seed, epochs=5)["static"]
        for seed in range(3)
    ]
    chance = results[0]["chance"]
    mean_cmap = float(np.mean([r["cmap"] for r in results]))
    # An attacker that saw evaluation rows while training would memorise noise (cMAP ~1).
    assert chance - 0.2 < mean_cmap < 0.85


def test_evaluate_privacy_rejects_unknown_protocol(small_cache):
    with pytest.raises(ValueError, match="protocol"):
        evaluate_privacy(small_cache, None, "val", protocols=("pixels",), epochs=1)


def test_evaluate_utility_reports_groups(small_cache):
    result = evaluate_utility(small_cache, None, "val", task="action", seed=0, epochs=5)
    assert 0.0 <= result["top1"] <= 1.0
    val_with_action = small_cache.video_indices("val", with_action=True)
    assert result["eval_videos"] == len(val_with_action)
    train_with_action = small_cache.video_indices("train", with_action=True)
    assert result["train_clips"] == int(np.isin(small_cache.clip_video.numpy(), train_with_action).sum())
    groups = small_cache.meta["group_values"][small_cache.meta["group_names"][0]]
    assert set(result["per_group"]) <= set(groups) and result["per_group"]
    values = list(result["per_group"].values())
    assert result["group_gap"] == pytest.approx(max(values) - min(values))


def test_pooled_applies_transform_then_means_tokens(small_cache):
    features = small_cache.clip_features[:5]
    out = pooled(features, lambda t: t * 2, batch_size=2)
    assert out.shape == (5, small_cache.dim)
    assert torch.allclose(out, features.float().mean(1) * 2)
    assert pooled(features[:0], None).shape == (0, small_cache.dim)
