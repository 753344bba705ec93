from pathlib import Path

import pytest
from optuna.distributions import FloatDistribution

from aam_search.spaces import SpaceError, load_space, preset, resolve_space

EXAMPLE = """\
name: my-space
params:
  loss.w_lc: {type: float, low: 1, high: 1000, log: true}
  adapter.kind: {type: categorical, choices: [attention, mlp]}
  adapter.heads: {type: categorical, choices: [4, 8], condition: {param: adapter.kind, in: [attention]}}
  optim.epochs: {type: fixed, value: 10}
  adapter.layers: [1, 3, 5]
  optim.batch_size: 128
  optim.lr: {type: float, low: 1e-5, high: 1e-2, log: true}
"""


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_documented_example_loads(tmp_path):
    space = load_space(_write(tmp_path, EXAMPLE))
    assert space.name == "my-space"
    assert space.params["adapter.heads"].condition.param == "adapter.kind"
    assert space.params["adapter.heads"].condition.in_ == ["attention"]
    assert space.params["adapter.layers"].choices == [1, 3, 5]
    assert space.params["optim.batch_size"].value == 128
    assert space.params["optim.epochs"].value == 10
    # 1e-5 is a number here, although plain YAML 1.1 reads it as a string
    assert space.distributions()["optim.lr"] == FloatDistribution(1e-5, 1e-2, log=True)


def test_name_defaults_to_the_file_stem(tmp_path):
    space = load_space(_write(tmp_path, "params:\n  adapter.layers: [1, 2]\n", "narrow.yaml"))
    assert space.name == "narrow"


def test_errors_name_the_file_and_the_parameter(tmp_path):
    path = _write(tmp_path, "params:\n  loss.w_lcc: {type: float, low: 1, high: 2}\n")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: parameter 'loss.w_lcc': unknown trainer field 'loss.w_lcc'")
    assert "did you mean 'loss.w_lc'" in str(info.value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("params: [1, 2]\n", "'params' must be a mapping"),
        ("- a\n- b\n", "expected a mapping"),
        ("params: {a: [1\n", "not valid YAML"),
        ("parms:\n  adapter.layers: [1]\n", "unknown key 'parms'"),
        ("params:\n  adapter.layers: [1, 2]\n  adapter.layers: [3]\n", "key 'adapter.layers' is given twice"),
        ("include: [no-such-preset]\nparams: {}\n", "include 'no-such-preset' is neither a preset"),
        ("include: [loss-weights]\nexclude: [adapter.kind]\n", "exclude names parameter 'adapter.kind'"),
        ("params:\n  optim.epochs: {type: fixed, value: 3, high: 4}\n",
         "parameter 'optim.epochs': a fixed parameter takes 'value'"),
    ],
)
def test_file_level_errors(tmp_path, text, problem):
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpaceError, match="cannot read search space"):
        load_space(tmp_path / "absent.yaml")
    with pytest.raises(SpaceError, match="neither a preset"):
        resolve_space(tmp_path / "absent.yaml")


def test_include_presets_then_override_and_exclude(tmp_path):
    path = _write(tmp_path, """\
include: [loss-weights, adapter-size]
exclude: [loss.temperature]
params:
  loss.w_lc: {type: float, low: 10, high: 100, log: true}
  adapter.kind: attention
  optim.epochs: 5
""")
    space = load_space(path)
    assert "loss.temperature" not in space.params
    assert space.params["loss.w_lc"].low == 10 and space.params["loss.w_lc"].high == 100
    assert space.params["loss.w_privacy"] == preset("loss-weights").params["loss.w_privacy"]
    assert space.params["adapter.kind"].value == "attention"
    assert space.params["adapter.heads"].condition is not None  # still conditional, now always met
    assert space.params["optim.epochs"].value == 5
    assert list(space.params)[:3] == ["loss.w_lc", "loss.w_privacy", "loss.w_task"]


def test_include_a_file_relative_to_the_including_file(tmp_path):
    (tmp_path / "parts").mkdir()
    _write(tmp_path / "parts", "params:\n  optim.epochs: 3\n  adapter.layers: [1, 2]\n", "base.yaml")
    path = _write(tmp_path / "parts", "include: [paper, base.yaml]\nparams:\n  optim.epochs: 4\n", "top.yaml")
    space = load_space(path)
    assert space.params["optim.epochs"].value == 4
    assert space.params["adapter.layers"].choices == [1, 2]  # base.yaml came after paper
    assert space.params["loss.w_lc"].choices == [0.0, 1.0, 10.0, 100.0, 1000.0]


def test_include_cycle(tmp_path):
    _write(tmp_path, "include: [b.yaml]\nparams: {optim.epochs: 1}\n", "a.yaml")
    _write(tmp_path, "include: [a.yaml]\n", "b.yaml")
    with pytest.raises(SpaceError, match="include cycle"):
        load_space(tmp_path / "a.yaml")


def test_resolve_space_from_path_and_mapping_with_includes(tmp_path):
    _write(tmp_path, EXAMPLE, "mine.yaml")
    assert resolve_space("mine.yaml", base_dir=tmp_path).name == "my-space"
    assert resolve_space(str(tmp_path / "mine.yaml")).name == "my-space"
    space = resolve_space({"name": "study", "include": ["mine.yaml"], "params": {"optim.epochs": 2}},
                          base_dir=tmp_path)
    assert space.name == "study" and space.params["optim.epochs"].value == 2
    assert "loss.w_lc" in space.params
    with pytest.raises(SpaceError) as info:
        resolve_space({"params": {"loss.w_lcc": [1]}})
    assert str(info.value).startswith("search space: parameter 'loss.w_lcc'")


def test_full_preset_is_built_from_includes():
    full = preset("full")
    assert set(preset("loss-weights").params) | set(preset("adapter-size").params) < set(full.params)


@pytest.mark.parametrize("field", ["cache", "eval.split"])
def test_a_space_may_not_search_the_cache_or_the_eval_split(tmp_path, field):
    path = _write(tmp_path, f"params:\n  loss.w_lc: [1, 10]\n  {field}: [a, b]\n")
    with pytest.raises(SpaceError, match=rf"^{path}: parameter '{field}': '{field}' cannot be part of a search space"):
        load_space(path)


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = _write(tmp_path, "params:\n  adapter.layers: [1, 2]\n  loss.w_lc: [1]\n  adapter.layers: [3]\n")
    with pytest.raises(SpaceError, match=r"line 4: key 'adapter.layers' is given twice \(first on line 2\)"):
        load_space(path)
