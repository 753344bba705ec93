"""Task heads pre-trained once per study: stored next to the feature cache, loaded by the
next trial with the same settings, retrained (with a warning) when the file is bad."""

import shutil

import pytest
import torch
from safetensors.torch import save_file

from aam_search.features.cache import FeatureCache
from aam_search.protocol import RESULT_FILE
from aam_search.trainer.data import task_num_classes
from aam_search.trainer.head_cache import HEADS_FOLDER, heads_key, heads_path, pretrained_heads
from aam_search.trainer.model import TaskHeads
from tests.trainer.test_train import _config, _strict_json


@pytest.fixture
def cache(small_cache, tmp_path):
    """A private copy without the heads other tests' trials stored: these tests count them."""
    return FeatureCache.open(shutil.copytree(small_cache.path, tmp_path / "cache",
                                             ignore=shutil.ignore_patterns(HEADS_FOLDER)))


def _heads(cache, init_seed: int = 0) -> TaskHeads:
    torch.manual_seed(init_seed)  # whatever the trial built before: the stored heads must not depend on it
    return TaskHeads(cache.dim, task_num_classes(cache))


def _fill(cache, heads, **changes):
    settings = {"epochs": 2, "lr": 1e-3, "seed": 0, **changes}
    return pretrained_heads(heads, cache, **settings)


def _same(a: TaskHeads, b: TaskHeads) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_second_trial_loads_the_heads_the_first_one_trained(cache):
    first, second = _heads(cache, 1), _heads(cache, 2)
    assert _fill(cache, first) == "trained"
    key = heads_key(cache, first, epochs=2, lr=1e-3, seed=0)
    assert heads_path(cache, key).is_file()
    assert not [p for p in (cache.path / HEADS_FOLDER).iterdir() if p.suffix == ".tmp"]
    assert _fill(cache, second) == "cached"
    assert _same(first, second)


@pytest.mark.parametrize("change", [{"seed": 1}, {"epochs": 3}, {"lr": 2e-3}])
def test_other_settings_train_their_own_heads(cache, change):
    assert _fill(cache, _heads(cache)) == "trained"
    other = _heads(cache)
    assert _fill(cache, other, **change) == "trained"
    assert not _same(other, _heads(cache))  # trained, not left at their initialisation
    assert len(list((cache.path / HEADS_FOLDER).iterdir())) == 2


def test_no_pretraining_stores_nothing(cache):
    assert _fill(cache, _heads(cache), epochs=0) == "untrained"
    assert not (cache.path / HEADS_FOLDER).exists()


def test_a_corrupt_or_mismatched_file_is_retrained_with_a_warning(cache, capsys):
    reference = _heads(cache)
    _fill(cache, reference)
    path = heads_path(cache, heads_key(cache, reference, epochs=2, lr=1e-3, seed=0))
    path.write_bytes(b"\x80\x04not safetensors at all")  # e.g. a pickle: never loaded
    again = _heads(cache)
    assert _fill(cache, again) == "trained"
    assert "unreadable" in capsys.readouterr().err
    assert _same(again, reference)
    save_file({"heads.wrong.weight": torch.zeros(2, 2)}, str(path))
    third = _heads(cache)
    assert _fill(cache, third) == "trained"
    assert "do not fit" in capsys.readouterr().err
    assert _fill(cache, _heads(cache)) == "cached"  # rewritten whole


def test_trials_say_where_their_heads_came_from(cache, tmp_path, monkeypatch):
    import aam_search.trainer.train as train_module

    monkeypatch.setattr(train_module.AAMRecipe, "evaluate", lambda self: {"stub": True})
    sources = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = _config(cache, seed=seed, optim={"epochs": 1})
        assert train_module.run_trial(config, tmp_path / name)["status"] == "completed"
        sources.append(_strict_json(tmp_path / name / RESULT_FILE)["heads"])
    assert sources == ["trained", "cached", "trained"]
