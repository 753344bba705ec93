"""Training batches: vectorised draws that are deterministic per (seed, epoch, rank), shard
across ranks, keep static pairs distinct, and do not depend on where the features live."""

import numpy as np
import pytest
import torch

from aam_search.trainer.data import DeviceBatches, TrainingData, choose_residency
from aam_search.trainer.guard import DeviceLosses
from aam_search.trainer.config import GuardConfig

BATCH = 4


@pytest.fixture(scope="module")
def data(small_cache):
    return TrainingData(small_cache)


def _rows_of(batches: DeviceBatches, epoch: int, step: int):
    videos, clip, a, b = batches.indices(epoch, step)
    positions = videos.tolist()
    video_ids = batches.data.videos[positions]
    return video_ids, batches.clip_rows[clip].numpy(), batches.static_rows[a].numpy(), batches.static_rows[b].numpy()


def test_draws_belong_to_their_video_and_pairs_are_distinct(data, small_cache):
    clip_owner, static_owner = small_cache.clip_video.numpy(), small_cache.static_video.numpy()
    batches = DeviceBatches(data, BATCH, seed=3)
    seen_pairs = 0
    for epoch in range(6):
        for step in range(batches.steps_per_epoch):
            videos, clips, a, b = _rows_of(batches, epoch, step)
            assert len(set(videos)) == len(videos) == min(BATCH, len(data))
            assert (clip_owner[clips] == videos).all()
            paired = data.has_pair[videos]
            assert (static_owner[a[paired]] == videos[paired]).all()
            assert (static_owner[b[paired]] == videos[paired]).all()
            assert (a[paired] != b[paired]).all()
            seen_pairs += int(paired.sum())
    assert seen_pairs > 0


def test_draws_are_deterministic_per_seed_epoch_and_rank(data):
    first = DeviceBatches(data, BATCH, seed=5)
    again = DeviceBatches(data, BATCH, seed=5)
    other_seed = DeviceBatches(data, BATCH, seed=6)
    same = [np.array_equal(x, y) for x, y in zip(_rows_of(first, 2, 0), _rows_of(again, 2, 0))]
    assert all(same)
    # Any step can be drawn in any order (the stacked trainer draws steps itself).
    late = _rows_of(first, 4, 0)
    assert all(np.array_equal(x, y) for x, y in zip(late, _rows_of(again, 4, 0)))
    differs = lambda p, q: any(not np.array_equal(x, y) for x, y in zip(p, q))  # noqa: E731
    assert differs(_rows_of(first, 0, 0), _rows_of(other_seed, 0, 0)) or differs(
        _rows_of(first, 1, 0), _rows_of(other_seed, 1, 0))
    assert differs(_rows_of(first, 0, 0), _rows_of(first, 1, 0)) or differs(
        _rows_of(first, 2, 0), _rows_of(first, 3, 0))


def test_ranks_share_the_shuffle_and_take_their_own_batches(data):
    ranks = [DeviceBatches(data, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == data.batches_per_epoch(2, 2)
    assert torch.equal(ranks[0]._draws(0)[0], ranks[1]._draws(0)[0])  # one shuffle for all ranks
    for step in range(ranks[0].steps_per_epoch):
        mine = set(ranks[0].indices(0, step)[0].tolist())
        theirs = set(ranks[1].indices(0, step)[0].tolist())
        assert mine and not mine & theirs


def test_resident_and_streamed_batches_are_the_same(data):
    resident = DeviceBatches(data, BATCH, seed=2, residency="device")
    streamed = DeviceBatches(data, BATCH, seed=2, residency="streamed")
    assert (resident.residency, streamed.residency) == ("device", "streamed")
    assert resident.clip_source is not None and streamed.clip_source is None
    count = 0
    for x, y in zip(resident.epoch(1), streamed.epoch(1), strict=True):
        for field in ("clips", "static_a", "static_b", "pair_mask", "attrs"):
            assert torch.equal(getattr(x, field), getattr(y, field)), field
        assert x.clips.dtype == torch.float32 and x.clips.device.type == "cpu"
        assert x.targets.keys() == y.targets.keys()
        assert all(torch.equal(x.targets[k], y.targets[k]) for k in x.targets)
        count += 1
    assert count == resident.steps_per_epoch
    # The features are the cache's rows (upcast), the labels those of the drawn videos.
    videos, clip, _, _ = resident.indices(1, 0)
    batch = resident.draw(1, 0)
    raw = data.cache.clip_features[resident.clip_rows[clip]].float()
    assert torch.equal(batch.clips, raw)
    assert torch.equal(batch.attrs, data.cache.labels("attrs")[torch.from_numpy(data.videos[videos.numpy()])])


def test_residency_follows_the_memory_that_is_free():
    cpu = torch.device("cpu")
    assert choose_residency(1, cpu)[0] == "device"
    mode, why = choose_residency(2**62, cpu)
    assert mode == "streamed" and "MiB free" in why
    assert choose_residency(2**62, cpu, "device") == ("device", "as configured")


def test_loss_guard_remembers_the_first_bad_step_until_it_is_read():
    guard = DeviceLosses(GuardConfig(max_loss=10.0), torch.device("cpu"))
    keep = lambda flags: flags  # noqa: E731  (one rank)
    guard.add({"loss": torch.tensor(1.0), "l_lc": torch.tensor(0.1)}, step=0)
    assert guard.check(0, 0, keep) is None
    guard.add({"loss": torch.tensor(50.0), "l_lc": torch.tensor(0.1)}, step=1)
    guard.add({"loss": torch.tensor(float("nan")), "l_lc": torch.tensor(0.1)}, step=2)
    status, reason = guard.check(0, 2, keep)
    assert status == "diverged"
    assert reason == "loss diverged in epoch 0, step 1 (l_lc=0.1, loss=50)"
    assert guard.epoch_means(3) == pytest.approx({"loss": float("nan"), "l_lc": 0.1}, nan_ok=True)

    nan_first = DeviceLosses(GuardConfig(), torch.device("cpu"))
    nan_first.add({"loss": torch.tensor(float("inf")), "l_lc": torch.tensor(0.0)}, step=7)
    status, reason = nan_first.check(3, 9, keep)
    assert status == "failed" and reason.startswith("non-finite loss in epoch 3, step 7 (")
    # Another rank's bad step: this one names the current step.
    clean = DeviceLosses(GuardConfig(), torch.device("cpu"))
    clean.add({"loss": torch.tensor(1.0)}, step=4)
    status, reason = clean.check(0, 4, lambda flags: flags + torch.tensor([1.0, 0.0]))
    assert status == "failed" and reason == "non-finite loss in epoch 0, step 4 (loss=1)"


def test_a_streamed_trial_trains_as_a_resident_one_and_says_so(small_cache, tmp_path, monkeypatch):
    """Same draws, same losses: where the features live changes the speed, not the run. The
    compile flag is checked for its wiring only (compiling takes minutes on this CPU)."""
    import aam_search.trainer.train as train_module
    from aam_search.protocol import METRICS_FILE, RESULT_FILE, read_metrics
    from aam_search.trainer.model import AnonymizingAdapter
    from tests.trainer.test_train import _config, _strict_json

    monkeypatch.setattr(train_module.AAMRecipe, "evaluate", lambda self: {"runtime": self._runtime()})
    compiled = []
    monkeypatch.setattr(AnonymizingAdapter, "compile", lambda self, *a, **k: compiled.append(self))
    results, metrics = {}, {}
    for residency, compile_flag in (("device", False), ("streamed", True)):
        out = tmp_path / residency
        config = _config(small_cache, optim={"epochs": 2, "head_pretrain_epochs": 0, "data_residency": residency,
                                             "compile": compile_flag}, guard={"check_every": 1})
        assert train_module.run_trial(config, out)["status"] == "completed"
        results[residency], metrics[residency] = _strict_json(out / RESULT_FILE), read_metrics(out / METRICS_FILE)
    assert results["device"]["runtime"]["data_residency"] == "device"
    assert results["streamed"]["runtime"]["data_residency"] == "streamed"
    drop = lambda line: {k: v for k, v in line.items() if k not in ("seconds", "samples_per_s")}  # noqa: E731
    assert [drop(x) for x in metrics["device"]] == [drop(x) for x in metrics["streamed"]]
    assert len(compiled) == 1 and results["streamed"]["runtime"]["compiled"] is True
    assert results["streamed"]["timings"]["compile_s"] >= 0 and "compile_s" not in results["device"]["timings"]
