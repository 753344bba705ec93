import itertools

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from aam_search.spaces import merge_overrides, preset, preset_names, resolve_space
from aam_search.trainer.config import parse_trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sampler(kind: str) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=7)
    return optuna.samplers.TPESampler(seed=7, n_startup_trials=5)


def test_preset_names():
    assert preset_names() == ["loss-weights", "adapter-size", "paper", "full", "privacy"]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
@pytest.mark.parametrize("name", ["loss-weights", "adapter-size", "paper", "full", "privacy"])
def test_suggestions_make_valid_trial_configs(name, sampler):
    space = preset(name)
    seen = []

    def objective(trial):
        params = space.suggest(trial)
        config = parse_trial_config(merge_overrides({"cache": "/tmp/x"}, space.to_overrides(params)))
        for path, value in params.items():
            section, field = path.split(".")
            assert getattr(getattr(config, section), field) == value
            spec = space.params[path]
            if spec.type in ("float", "int"):
                assert spec.low <= value <= spec.high
            elif spec.type == "categorical":
                assert value in spec.choices
        if "adapter.kind" in params or "adapter.heads" in params:
            assert ("adapter.heads" in params) == (params["adapter.kind"] == "attention")
        seen.append(params)
        return float(config.loss.w_lc) + config.adapter.layers

    study = optuna.create_study(sampler=_sampler(sampler))
    study.optimize(objective, n_trials=30)
    assert len(seen) == 30
    if name in ("adapter-size", "full"):
        kinds = {params["adapter.kind"] for params in seen}
        assert kinds == {"attention", "mlp"}


def test_paper_grid_has_15_points_and_grid_sampler_visits_each_once():
    space = preset("paper")
    grid = space.grid()
    assert grid == {"loss.w_lc": [0.0, 1.0, 10.0, 100.0, 1000.0], "adapter.layers": [1, 3, 5]}
    assert space.size() == 15
    visited = []

    def objective(trial):
        params = space.suggest(trial)
        assert params["adapter.kind"] == "attention" and params["adapter.heads"] == 8
        parse_trial_config(merge_overrides({"cache": "/tmp/x"}, space.to_overrides(params)))
        visited.append((params["loss.w_lc"], params["adapter.layers"]))
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(objective, n_trials=40)  # GridSampler stops the study when the grid is done
    assert len(visited) == 15
    assert sorted(visited) == sorted(itertools.product(grid["loss.w_lc"], grid["adapter.layers"]))


def test_continuous_presets_are_no_grid():
    for name in ("loss-weights", "adapter-size", "full"):
        assert preset(name).grid() is None


def test_preset_distributions():
    dists = preset("loss-weights").distributions()
    assert dists["loss.w_lc"] == FloatDistribution(0.1, 1000.0, log=True)
    assert dists["loss.temperature"] == FloatDistribution(0.05, 0.5, log=True)
    size = preset("adapter-size")
    dists = size.distributions()
    assert dists["adapter.kind"] == CategoricalDistribution(["attention", "mlp"])
    assert dists["adapter.layers"] == IntDistribution(1, 6)
    assert dists["adapter.dropout"] == FloatDistribution(0.0, 0.3)
    assert "adapter.heads" not in dists  # conditional
    assert size.distributions(include_conditional=True)["adapter.heads"] == CategoricalDistribution([4, 8, 16])
    full = preset("full").distributions()
    assert full["optim.lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert full["loss.privacy_objective"] == CategoricalDistribution(["selfsup", "adversarial"])
    assert set(preset("loss-weights").params) < set(full)


def test_resolve_preset_by_name():
    assert resolve_space("paper") == preset("paper")


def test_paper_preset_runs_the_papers_optimiser():
    space = preset("paper")
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    params = space.suggest(study.ask())
    # Even over a study whose shared trial settings give an explicit lr.
    config = parse_trial_config(merge_overrides({"cache": "/tmp/x", "optim": {"lr": 3e-3, "batch_size": 64}},
                                                space.to_overrides(params)))
    assert config.optim.effective_lr == pytest.approx(1e-4 * 64 / 512)
    assert config.optim.budget(2).epochs == 100  # no step floor: the paper's 100 epochs


def test_privacy_preset_searches_the_objective_mix_and_the_lr():
    dists = preset("privacy").distributions()
    assert dists["loss.w_hsic"] == FloatDistribution(0.01, 100.0, log=True)
    assert dists["loss.eraser"] == CategoricalDistribution([True, False])
    assert dists["loss.hsic_condition"] == CategoricalDistribution(["none", "action"])
    assert dists["loss.privacy_objective"] == CategoricalDistribution(["selfsup", "adversarial"])
    assert dists["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert {"loss.w_lc", "loss.w_privacy", "loss.w_task"} <= set(dists)


def test_the_default_space_searches_the_lr():
    assert preset("loss-weights").distributions()["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
