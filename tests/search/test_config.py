"""The study config refuses, before any extraction, what would spoil or stall a search."""

from pathlib import Path

import pytest
import yaml

from aam_search.features.config import ConfigError
from aam_search.search.config import load_study_config, parse_study_config

# A manifest that does not exist: every refusal below happens before extraction would start.
BASE = {"name": "s", "data": {"manifest": "no/such/manifest.csv"}}


def _write(folder: Path, data, name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _refused(tmp_path: Path, **changes) -> str:
    path = _write(tmp_path, {**BASE, **changes})
    with pytest.raises(ConfigError) as caught:
        load_study_config(path)
    message = str(caught.value)
    assert all(line.startswith(f"{path}: ") for line in message.splitlines()), message
    return message


def test_a_search_on_the_test_split_is_refused(tmp_path):
    message = _refused(tmp_path, trial={"eval": {"split": "test"}})
    assert "field 'trial'" in message and "trial.eval.split is 'test'" in message and "val" in message


def test_the_val_split_may_be_named_explicitly(tmp_path):
    config = load_study_config(_write(tmp_path, {**BASE, "trial": {"eval": {"split": "val"}}}))
    assert config.trial["eval"]["split"] == "val"


@pytest.mark.parametrize(
    "field, value",
    [("eval.split", {"type": "categorical", "choices": ["val", "test"]}),
     ("eval.split", "test"),
     ("cache", "/elsewhere/cache")],
)
def test_a_space_cannot_override_the_cache_or_the_eval_split(tmp_path, field, value):
    message = _refused(tmp_path, space={"params": {"loss.w_lc": [1, 10], field: value}})
    assert f"parameter '{field}': '{field}' cannot be part of a search space" in message


def test_a_space_file_cannot_override_the_eval_split(tmp_path):
    from aam_search.spaces import SpaceError

    _write(tmp_path, "params:\n  eval.split: [val, test]\n", "space.yaml")
    with pytest.raises(SpaceError, match=r"space.yaml: parameter 'eval.split': 'eval.split' cannot be part"):
        load_study_config(_write(tmp_path, {**BASE, "space": "space.yaml"}))


def test_grid_on_a_continuous_space_is_refused_before_extraction(tmp_path):
    message = _refused(tmp_path, sampler="grid", space="loss-weights")
    assert "sampler: 'grid'" in message and "parameter 'loss.w_lc' is a continuous float range" in message


def test_grid_on_a_space_file_with_a_float_is_refused(tmp_path):
    _write(tmp_path, "params:\n  loss.w_lc: {type: float, low: 1, high: 10}\n", "space.yaml")
    message = _refused(tmp_path, sampler="grid", space="space.yaml")
    assert "parameter 'loss.w_lc' is a continuous float range" in message


def test_grid_on_a_grid_space_is_accepted(tmp_path):
    config = load_study_config(_write(tmp_path, {**BASE, "sampler": "grid", "space": "paper"}))
    assert config.sampler == "grid"


@pytest.mark.parametrize(
    "point, problem",
    [
        ({"loss.wlc": 10.0}, "parameter 'loss.wlc' is not in the space (did you mean 'loss.w_lc'?)"),
        ({"loss.w_lc": 5000.0}, "parameter 'loss.w_lc': 5000.0 is not in its float"),
        ({"loss.w_lc": "big"}, "parameter 'loss.w_lc': 'big' is not in its float"),
        ({"adapter.kind": "conv"}, "parameter 'adapter.kind': 'conv' is not in its categorical choices"),
        ({"adapter.layers": 2.5}, "parameter 'adapter.layers': 2.5 is not in its int"),
        ({"optim.epochs": 7}, "parameter 'optim.epochs' is fixed at 2 by the space, not 7"),
        ({"adapter.heads": 4}, "parameter 'adapter.heads' is conditional (on 'adapter.kind')"),
    ],
)
def test_enqueued_points_are_checked_against_the_space(tmp_path, point, problem):
    space = {"params": {
        "loss.w_lc": {"type": "float", "low": 1, "high": 1000, "log": True},
        "adapter.kind": ["attention", "mlp"],
        "adapter.layers": {"type": "int", "low": 1, "high": 4},
        "adapter.heads": {"type": "categorical", "choices": [4, 8], "condition": {"param": "adapter.kind",
                                                                                   "in": ["attention"]}},
        "optim.epochs": 2,
    }}
    message = _refused(tmp_path, space=space, enqueue=[{"loss.w_lc": 10.0}, point])
    assert f"enqueue[1] {point}: {problem}" in message
    assert "enqueue[0]" not in message


def test_good_enqueued_points_are_accepted(tmp_path):
    enqueue = [{"loss.w_lc": 1000.0, "loss.w_task": 1, "loss.w_privacy": 0.5}]
    config = load_study_config(_write(tmp_path, {**BASE, "enqueue": enqueue}))
    assert config.enqueue == enqueue


@pytest.mark.parametrize(
    "changes, field",
    [({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"), ({"n_trials": True}, "n_trials"),
     ({"track": "no"}, "track"), ({"max_parallel": 2.0}, "max_parallel")],
)
def test_strict_fields_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"study.yaml: field '{field}'"):
        parse_study_config({**BASE, **changes}, "study.yaml")


def test_a_key_given_twice_in_a_study_file_is_refused(tmp_path):
    path = _write(tmp_path, "name: s\ndata: {manifest: m.csv}\nn_trials: 4\nseed: 1\nn_trials: 40\n")
    with pytest.raises(ConfigError, match=r"line 5: key 'n_trials' is given twice \(first on line 3\)"):
        load_study_config(path)


def test_an_objective_on_a_protocol_the_trials_do_not_measure_is_refused(tmp_path):
    message = _refused(tmp_path, objectives=["utility", "leakage:clip"],
                       trial={"eval": {"protocols": ["static"]}})
    assert "'leakage:clip'" in message and "trial.eval.protocols" in message and "['static']" in message


def test_an_objective_on_a_measured_protocol_is_accepted(tmp_path):
    both = load_study_config(_write(tmp_path, {**BASE, "objectives": ["utility", "leakage:clip"]}))
    assert both.objectives == ["utility", "leakage:clip"]  # the default protocols measure both
    static = load_study_config(_write(tmp_path, {**BASE, "objectives": ["utility", "leakage:static"],
                                                 "trial": {"eval": {"protocols": ["static"]}}}, "s2.yaml"))
    assert static.objectives == ["utility", "leakage:static"]


def test_the_sampler_startup_is_a_third_of_the_study_within_2_to_10_unless_given(tmp_path):
    from aam_search.search.study import make_sampler

    def startup(**changes) -> int:
        return make_sampler(parse_study_config({**BASE, **changes}), None)._n_startup_trials

    assert [startup(n_trials=n) for n in (3, 12, 36, 100)] == [2, 4, 10, 10]
    # A comparison of studies of different sizes (bench/early_stopping.py) holds it fixed.
    assert startup(n_trials=36, startup_trials=4) == 4
    assert make_sampler(parse_study_config({**BASE, "sampler": "gp", "startup_trials": 3}), None)._n_startup_trials == 3
    assert "startup_trials" in _refused(tmp_path, startup_trials=0)
