import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from aam_search.spaces import (
    ParamSpec,
    SearchSpace,
    SpaceError,
    build_space,
    merge_overrides,
    resolve_space,
    to_overrides,
)
from aam_search.trainer.config import parse_trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

ATTENTION_ONLY = {"param": "adapter.kind", "in": ["attention"]}


def _space(**params) -> SearchSpace:
    return build_space({"name": "t", "params": {k.replace("__", "."): v for k, v in params.items()}})


def _error(params: dict) -> str:
    with pytest.raises(SpaceError) as info:
        build_space({"name": "t", "params": params}, "space.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    "params, name, problem",
    [
        ({"loss.w_lcc": {"type": "float", "low": 1, "high": 2}}, "loss.w_lcc",
         "unknown trainer field 'loss.w_lcc' (did you mean 'loss.w_lc'"),
        ({"w_lc": [1, 2]}, "w_lc", "did you mean 'loss.w_lc'"),
        ({"adapter.layers.x": [1, 2]}, "adapter.layers.x", "unknown trainer field"),
        ({"loss": 3}, "loss", "is a section of the trainer config, not a field"),
        ({"loss.w_lc": {"type": "float", "low": 5, "high": 1}}, "loss.w_lc", "low (5) must be less than high (1)"),
        ({"loss.w_lc": {"type": "float", "low": 1, "high": 1}}, "loss.w_lc", "must be less than high"),
        ({"loss.w_lc": {"type": "float", "low": 0, "high": 10, "log": True}}, "loss.w_lc",
         "a log range must lie above 0, got low=0"),
        ({"loss.w_lc": {"type": "float", "low": -1, "high": 10, "log": True}}, "loss.w_lc", "above 0"),
        ({"loss.w_lc": {"type": "float", "low": 0, "high": 1, "step": 0.3}}, "loss.w_lc",
         "step 0.3 does not divide the range [0, 1]"),
        ({"adapter.layers": {"type": "int", "low": 1, "high": 6, "step": 2}}, "adapter.layers",
         "step 2 does not divide"),
        ({"loss.w_lc": {"type": "float", "low": 1, "high": 10, "step": 1, "log": True}}, "loss.w_lc",
         "step cannot be combined with log"),
        ({"adapter.layers": {"type": "int", "low": 1.5, "high": 6}}, "adapter.layers",
         "integer bounds and step, got low=1.5"),
        ({"loss.w_lc": {"type": "float", "low": "ten", "high": 6}}, "loss.w_lc", "low must be a number, got 'ten'"),
        ({"loss.w_lc": {"type": "float", "low": True, "high": 6}}, "loss.w_lc", "low must be a number"),
        ({"loss.w_lc": {"type": "float", "low": 1}}, "loss.w_lc", "needs 'low' and 'high'"),
        ({"adapter.layers": []}, "adapter.layers", "choices must not be empty"),
        ({"adapter.layers": {"type": "categorical", "choices": [1, 3, 1]}}, "adapter.layers", "duplicate choice 1"),
        ({"adapter.layers": {"type": "categorical"}}, "adapter.layers", "needs 'choices'"),
        ({"eval.protocols": [["static"], ["clip"]]}, "eval.protocols", "Optuna takes only"),
        ({"optim.epochs": {"type": "fixed", "value": 3, "low": 1}}, "optim.epochs",
         "a fixed parameter takes 'value' (and 'condition'), not 'low'"),
        ({"optim.epochs": {"type": "fixed"}}, "optim.epochs", "needs a 'value'"),
        ({"loss.w_lc": {"type": "categorical", "choices": [1], "log": True}}, "loss.w_lc", "not 'log'"),
        ({"optim.epochs": {"type": "fixd", "value": 3}}, "optim.epochs", "type 'fixd' is not one of"),
        ({"optim.epochs": {"value": 3}}, "optim.epochs", "missing 'type'"),
        ({"optim.epochs": {"type": "fixed", "valu": 3}}, "optim.epochs", "unknown key 'valu'"),
        # values the trainer would refuse
        ({"adapter.dropout": {"type": "float", "low": 0, "high": 1}}, "adapter.dropout",
         "high 1 is not a valid trainer value"),
        ({"loss.privacy_objective": ["selfsup", "adversary"]}, "loss.privacy_objective",
         "choice 'adversary' is not a valid trainer value"),
        ({"adapter.layers": {"type": "float", "low": 1, "high": 6}}, "adapter.layers",
         "sampled value"),
        ({"optim.epochs": 0}, "optim.epochs", "value 0 is not a valid trainer value"),
        # conditions
        ({"adapter.kind": ["attention", "mlp"],
          "adapter.heads": {"type": "categorical", "choices": [4], "condition": {"param": "adapter.kin", "in": ["attention"]}}},
         "adapter.heads", "condition names unknown parameter 'adapter.kin' (did you mean 'adapter.kind'?)"),
        ({"adapter.layers": {"type": "int", "low": 1, "high": 3},
          "adapter.heads": {"type": "categorical", "choices": [4], "condition": {"param": "adapter.layers", "in": [1]}}},
         "adapter.heads", "names 'adapter.layers', an int parameter; conditions need a categorical"),
        ({"adapter.kind": ["attention", "mlp"],
          "adapter.heads": {"type": "categorical", "choices": [4], "condition": {"param": "adapter.kind", "in": ["attn"]}}},
         "adapter.heads", "condition value 'attn' is not a choice of 'adapter.kind'"),
        ({"adapter.kind": {"type": "categorical", "choices": ["mlp"], "condition": {"param": "adapter.kind", "in": ["mlp"]}}},
         "adapter.kind", "names the parameter itself"),
    ],
)
def test_validation_errors_name_the_file_parameter_and_problem(params, name, problem):
    message = _error(params)
    assert message.startswith(f"space.yaml: parameter '{name}': ")
    assert problem in message


def test_condition_cycle():
    message = _error({
        "adapter.kind": {"type": "categorical", "choices": ["attention", "mlp"],
                         "condition": {"param": "loss.privacy_objective", "in": ["selfsup"]}},
        "loss.privacy_objective": {"type": "categorical", "choices": ["selfsup", "adversarial"],
                                   "condition": {"param": "adapter.kind", "in": ["mlp"]}},
    })
    assert "conditions form a cycle" in message
    assert "adapter.kind -> loss.privacy_objective -> adapter.kind" in message


def test_several_problems_are_all_reported():
    message = _error({"loss.w_lcc": [1, 2], "optim.epochz": 3})
    assert "'loss.w_lcc'" in message and "'optim.epochz'" in message
    assert len(message.splitlines()) == 2


def test_space_needs_parameters():
    with pytest.raises(SpaceError, match="at least one parameter"):
        build_space({"name": "t", "params": {}})


def test_shorthands():
    space = _space(adapter__layers=[1, 3, 5], optim__epochs=10, optim__lr=None)
    assert space.params["adapter.layers"] == ParamSpec(type="categorical", choices=[1, 3, 5])
    assert space.params["optim.epochs"] == ParamSpec(type="fixed", value=10)
    assert space.params["optim.lr"].type == "fixed" and space.params["optim.lr"].value is None


def test_numeric_strings_and_integral_float_bounds_are_accepted():
    space = _space(optim__lr={"type": "float", "low": "1e-5", "high": "1e-2", "log": True},
                   adapter__layers={"type": "int", "low": 1.0, "high": 6.0})
    assert space.params["optim.lr"].low == 1e-5
    assert space.distributions()["adapter.layers"] == IntDistribution(1, 6)


def test_distribution_types():
    space = _space(
        loss__w_lc={"type": "float", "low": 1, "high": 100, "log": True},
        adapter__dropout={"type": "float", "low": 0, "high": 0.2, "step": 0.05},
        adapter__layers={"type": "int", "low": 1, "high": 5, "step": 2},
        optim__batch_size={"type": "int", "low": 16, "high": 256, "log": True},
        adapter__kind=["attention", "mlp"],
        optim__epochs=5,
    )
    dists = space.distributions()
    assert dists == {
        "loss.w_lc": FloatDistribution(1, 100, log=True),
        "adapter.dropout": FloatDistribution(0, 0.2, step=0.05),
        "adapter.layers": IntDistribution(1, 5, step=2),
        "optim.batch_size": IntDistribution(16, 256, log=True),
        "adapter.kind": CategoricalDistribution(["attention", "mlp"]),
    }
    assert "optim.epochs" not in dists  # fixed values are not Optuna parameters


def _conditional_space() -> SearchSpace:
    # declared child-first on purpose: suggest() must still sample adapter.kind first
    return _space(
        adapter__heads={"type": "categorical", "choices": [4, 8], "condition": ATTENTION_ONLY},
        optim__head_lr={"type": "fixed", "value": 0.01, "condition": {"param": "adapter.heads", "in": [8]}},
        adapter__kind=["attention", "mlp"],
        adapter__layers={"type": "int", "low": 1, "high": 3},
    )


def test_conditional_sampling_follows_dependency_order():
    space = _conditional_space()
    assert space.order() == ["adapter.kind", "adapter.heads", "optim.head_lr", "adapter.layers"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        params = space.suggest(trial)
        assert list(trial.params) == [name for name in params if name != "optim.head_lr"]
        if params["adapter.kind"] == "mlp":
            assert "adapter.heads" not in params and "optim.head_lr" not in params
        else:
            assert params["adapter.heads"] in (4, 8)
            assert ("optim.head_lr" in params) == (params["adapter.heads"] == 8)
        seen.add((params["adapter.kind"], params.get("adapter.heads"), "optim.head_lr" in params))
        study.tell(trial, 0.0)
    assert seen == {("mlp", None, False), ("attention", 4, False), ("attention", 8, True)}


def test_condition_on_a_fixed_parameter():
    space = _space(adapter__kind="mlp",
                   adapter__heads={"type": "categorical", "choices": [4, 8], "condition": ATTENTION_ONLY})
    trial = optuna.create_study().ask()
    assert space.suggest(trial) == {"adapter.kind": "mlp"}


def test_conditional_space_is_no_grid_but_has_distinct_points():
    space = _conditional_space()
    assert space.grid() is None
    points = space.grid_points()
    assert len(points) == 3 * (1 + 1 + 1)  # layers x (mlp | attention-4 | attention-8+head_lr)
    assert {"adapter.kind": "attention", "adapter.heads": 8, "optim.head_lr": 0.01, "adapter.layers": 2} in points
    assert {"adapter.kind": "mlp", "adapter.layers": 1} in points


def test_int_parameters_enumerate_into_a_grid():
    space = _space(adapter__layers={"type": "int", "low": 1, "high": 5, "step": 2}, optim__epochs=3)
    assert space.grid() == {"adapter.layers": [1, 3, 5]}
    assert space.size() == 3


def test_complete_adds_fixed_and_drops_inactive():
    space = _conditional_space()
    stored = {"adapter.kind": "mlp", "adapter.heads": 8, "adapter.layers": 2, "seed": 4}
    assert space.complete(stored) == {"adapter.kind": "mlp", "adapter.layers": 2, "seed": 4}
    stored = {"adapter.kind": "attention", "adapter.heads": 8, "adapter.layers": 2}
    assert space.complete(stored)["optim.head_lr"] == 0.01
    with pytest.raises(SpaceError, match="'adapter.layers' is active but has no value"):
        space.complete({"adapter.kind": "mlp"})


def test_to_overrides_nests_dotted_paths():
    flat = {"loss.w_lc": 10, "adapter.layers": 3, "adapter.kind": "mlp", "seed": 2,
            "loss.task_weights.action": 0.5}
    assert to_overrides(flat) == {
        "loss": {"w_lc": 10, "task_weights": {"action": 0.5}},
        "adapter": {"layers": 3, "kind": "mlp"},
        "seed": 2,
    }
    assert _space(seed=[1, 2]).to_overrides({"seed": 1}) == {"seed": 1}
    with pytest.raises(SpaceError, match="conflicts"):
        to_overrides({"loss": 1, "loss.w_lc": 2})
    with pytest.raises(SpaceError, match="conflicts"):
        to_overrides({"loss.w_lc": 2, "loss": 1})


def test_merge_overrides_is_deep_and_leaves_inputs_alone():
    base = {"cache": "/c", "loss": {"w_lc": 100, "w_task": 1}, "eval": {"protocols": ["static"]}}
    overrides = {"loss": {"w_lc": 10}, "adapter": {"layers": 5}, "eval": {"protocols": ["clip"]}}
    merged = merge_overrides(base, overrides)
    assert merged == {"cache": "/c", "loss": {"w_lc": 10, "w_task": 1}, "adapter": {"layers": 5},
                      "eval": {"protocols": ["clip"]}}
    assert base["loss"] == {"w_lc": 100, "w_task": 1} and "adapter" not in base
    merged["adapter"]["layers"] = 1
    assert overrides["adapter"]["layers"] == 5
    config = parse_trial_config(merge_overrides(base, {"eval": {"primary_protocol": "static"}}))
    assert config.loss.w_lc == 100


def test_mapping_field_keys_are_trainer_fields():
    space = _space(loss__task_weights__action={"type": "float", "low": 0.1, "high": 2})
    assert "loss.task_weights.action" in space.distributions()


def test_resolve_space_from_a_mapping_and_directly():
    space = resolve_space({"params": {"adapter.layers": [1, 2]}})
    assert space.name == "custom"
    assert resolve_space(space) is space
    with pytest.raises(SpaceError, match="neither a preset"):
        resolve_space("no-such-space")
    with pytest.raises(SpaceError, match="unknown search space preset 'nope'"):
        from aam_search.spaces import preset

        preset("nope")


@pytest.mark.parametrize("name", ["loss-weights", "adapter-size", "paper", "full"])
def test_spaces_round_trip_through_plain_mappings(name):
    from aam_search.spaces import preset

    space = preset(name)
    assert build_space(space.to_dict()) == space
    assert SearchSpace.model_validate(space.model_dump(by_alias=True)) == space
    assert all("low" not in spec for spec in space.to_dict()["params"].values()
               if spec["type"] in ("categorical", "fixed"))


def test_fixed_none_round_trips():
    space = _space(optim__lr=None, adapter__layers=[1, 2])
    assert space.to_dict()["params"]["optim.lr"] == {"type": "fixed", "value": None}
    assert build_space(space.to_dict()) == space


def test_condition_in_may_be_a_scalar():
    space = _space(adapter__kind=["attention", "mlp"],
                   adapter__heads={"type": "categorical", "choices": [4, 8],
                                   "condition": {"param": "adapter.kind", "in": "attention"}})
    assert space.params["adapter.heads"].condition.in_ == ["attention"]
