"""Objectives that need attr: labels fail clearly, before any training, on a cache whose train
split has none: at a trial's start and at a study's start (where the trial config and the
search space meet the cache)."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from aam_search.features.cache import META_FILE, FeatureCache, file_records, write_json_atomic
from aam_search.features.config import ConfigError
from aam_search.protocol import METRICS_FILE
from aam_search.search.config import parse_study_config
from aam_search.search.orchestrator import Orchestrator
from aam_search.trainer.config import parse_trial_config
from aam_search.trainer.label_needs import check_attr_labels, objectives_needing_labels
from aam_search.trainer.train import run_trial

TRIAL = {"optim": {"epochs": 1, "min_steps": 0, "batch_size": 4, "head_pretrain_epochs": 0},
         "adapter": {"layers": 1, "heads": 4},
         "eval": {"protocols": ["static"], "primary_protocol": "static", "attacker_epochs": 2, "probe_epochs": 2}}


def _copy_with_train_attrs(cache: FeatureCache, folder, *, keep_images: bool) -> FeatureCache:
    """The cache with the train split's attr: labels removed (of videos only, if keep_images)."""
    target = folder / cache.path.name
    shutil.copytree(cache.path, target)
    labels = load_file(str(target / "labels.safetensors"))
    train = cache.labels("split").numpy() == cache.labels("split")[cache.video_indices("train")[0]].item()
    if keep_images:
        train &= ~cache.labels("is_image").numpy().astype(bool)
    attrs = labels["attrs"].clone()
    attrs[train] = -1
    labels["attrs"] = attrs
    save_file(labels, str(target / "labels.safetensors"))
    meta = json.loads((target / META_FILE).read_text())
    meta["files"] = file_records(target)  # a deliberate edit: record it, or verify() refuses the cache
    write_json_atomic(target / META_FILE, meta)
    return FeatureCache.open(target)


@pytest.fixture(scope="module")
def unlabelled_cache(small_cache, tmp_path_factory):
    return _copy_with_train_attrs(small_cache, tmp_path_factory.mktemp("no-train-attrs"), keep_images=False)


@pytest.fixture(scope="module")
def images_only_cache(small_cache, tmp_path_factory):
    return _copy_with_train_attrs(small_cache, tmp_path_factory.mktemp("image-attrs"), keep_images=True)


def test_which_objectives_need_labels():
    config = lambda **loss: parse_trial_config({"cache": "/c", "loss": loss})  # noqa: E731
    assert objectives_needing_labels(config()) == []
    assert objectives_needing_labels(config(privacy_objective="adversarial", w_privacy=10)) == []
    assert objectives_needing_labels(config(w_hsic=1.0)) == ["loss.w_hsic"]
    assert objectives_needing_labels(config(w_hsic=1.0, eraser=True)) == ["loss.w_hsic", "loss.eraser"]


def test_the_check_names_the_objective_and_the_missing_labels(unlabelled_cache, small_cache):
    check_attr_labels(["loss.w_hsic", "loss.eraser"], small_cache)  # labelled: fine
    check_attr_labels([], unlabelled_cache)  # NT-Xent only: needs nothing
    with pytest.raises(ConfigError) as caught:
        check_attr_labels(["loss.eraser"], unlabelled_cache, "trial.yaml")
    message = str(caught.value)
    assert message.startswith("trial.yaml:")
    assert "loss.eraser" in message and "attr:" in message and "train split" in message
    assert str(unlabelled_cache.path) in message and "female" in message  # names the columns


def test_hsic_needs_labelled_videos_but_the_eraser_takes_images(images_only_cache):
    check_attr_labels(["loss.eraser"], images_only_cache)
    with pytest.raises(ConfigError, match=r"loss\.w_hsic.*only train images"):
        check_attr_labels(["loss.w_hsic", "loss.eraser"], images_only_cache)


def test_a_trial_fails_before_training(unlabelled_cache, tmp_path):
    config = parse_trial_config({**TRIAL, "cache": str(unlabelled_cache.path), "loss": {"w_hsic": 1.0}})
    with pytest.raises(ConfigError, match=r"loss\.w_hsic"):
        run_trial(config, tmp_path)
    assert not (tmp_path / METRICS_FILE).exists() or not (tmp_path / METRICS_FILE).read_text()


def _study(cache, workdir, space, trial=None):
    return parse_study_config({"name": "labels", "workdir": str(workdir), "data": {"cache": str(cache.path)},
                               "trial": trial or TRIAL, "space": space, "n_trials": 1, "track": False})


@pytest.mark.parametrize(
    ("space", "trial_loss", "named"),
    [
        ("privacy", {}, ["loss.w_hsic", "loss.eraser"]),  # the space can turn both on
        ("loss-weights", {"eraser": True}, ["loss.eraser"]),  # the shared trial settings do
    ],
)
def test_a_study_fails_at_its_start_naming_the_objective(unlabelled_cache, tmp_path, space, trial_loss, named):
    config = _study(unlabelled_cache, tmp_path / "work", space, {**TRIAL, "loss": trial_loss})
    orchestrator = Orchestrator(config)
    with pytest.raises(ConfigError) as caught:
        orchestrator.prepare()
    message = str(caught.value)
    for path in named:
        assert path in message
    assert "attr:" in message and "study 'labels'" in message
    assert not (tmp_path / "work" / "optuna.db").exists()  # no study was created, no trial ran


def test_a_study_without_label_objectives_passes_the_check(unlabelled_cache, tmp_path):
    from aam_search.spaces import resolve_space

    orchestrator = Orchestrator(_study(unlabelled_cache, tmp_path / "work", "loss-weights"))
    orchestrator.cache, orchestrator.space = unlabelled_cache, resolve_space("loss-weights")
    orchestrator.base_trial = orchestrator._trial_config({}).model_dump(mode="json")
    orchestrator._check_label_needs()  # NT-Xent needs no labels: no error
