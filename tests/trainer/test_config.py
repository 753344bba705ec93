"""The trial config: YAML loading, validation errors that name file and field, derived values."""

from pathlib import Path

import pytest
import yaml

from aam_search.features.config import ConfigError
from aam_search.trainer.config import TrialConfig, load_trial_config, parse_trial_config


def _write(folder: Path, data, name: str = "trial.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_yaml_loads_nested_sections_and_defaults(tmp_path):
    path = _write(tmp_path, {
        "cache": "/data/cache/abc",
        "seed": 7,
        "adapter": {"kind": "mlp", "layers": 5},
        "loss": {"w_lc": 10, "privacy_objective": "adversarial", "task_weights": {"action": 0.5}},
        "optim": {"epochs": 3, "batch_size": 32},
        "eval": {"protocols": ["clip"], "primary_protocol": "clip", "split": "test"},
        "guard": {"max_lc": 5.0},
    })
    config = load_trial_config(path)
    assert config.cache == Path("/data/cache/abc")
    assert config.seed == 7
    assert config.adapter.kind == "mlp" and config.adapter.layers == 5
    assert config.adapter.heads == 8  # untouched defaults stay
    assert config.loss.w_lc == 10.0 and config.loss.w_task == 1.0 and config.loss.w_privacy == 1.0
    assert config.loss.privacy_objective == "adversarial"
    assert config.loss.task_weights == {"action": 0.5}
    assert config.optim.epochs == 3 and config.optim.batch_size == 32
    assert config.eval.protocols == ("clip",) and config.eval.split == "test"
    assert config.guard.max_lc == 5.0 and config.guard.max_loss == 1e6
    assert config.deepspeed is None and config.save_adapter is True


def test_paper_defaults():
    config = TrialConfig(cache=Path("/c"))
    assert (config.loss.w_lc, config.loss.w_task, config.loss.w_privacy) == (100.0, 1.0, 1.0)
    assert config.loss.temperature == 0.1
    # The optimiser is the project's (the paper's lives in the `paper` space preset).
    assert config.optim.effective_lr == 1e-3 and config.optim.min_steps == 500
    assert (config.loss.w_hsic, config.loss.eraser) == (0.0, False)  # beyond the paper: off
    assert config.adapter.kind == "attention" and config.adapter.layers == 3 and config.adapter.heads == 8
    assert config.eval.primary_protocol in config.eval.protocols


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"optim": {"batch_size": 1}}, "optim.batch_size"),  # out of range: NT-Xent needs negatives
        ({"optim": {"epochs": 0}}, "optim.epochs"),
        ({"optim": {"lr": -1e-3}}, "optim.lr"),
        ({"optim": {"epochs": "many"}}, "optim.epochs"),  # wrong type
        ({"optim": {"bogus": 1}}, "optim.bogus"),  # unknown field
        ({"loss": {"w_lc": -1}}, "loss.w_lc"),
        ({"loss": {"temperature": 0}}, "loss.temperature"),
        ({"loss": {"privacy_objective": "minmax"}}, "loss.privacy_objective"),
        ({"loss": {"w_hsic": -1}}, "loss.w_hsic"),
        ({"loss": {"hsic_condition": "gender"}}, "loss.hsic_condition"),
        ({"loss": {"eraser": "maybe"}}, "loss.eraser"),
        ({"optim": {"min_steps": -1}}, "optim.min_steps"),
        ({"optim": {"lr_scaling": "cubic"}}, "optim.lr_scaling"),
        ({"optim": {"warmup_fraction": 1.0}}, "optim.warmup_fraction"),
        ({"adapter": {"layers": 0}}, "adapter.layers"),
        ({"adapter": {"kind": "conv"}}, "adapter.kind"),
        ({"eval": {"protocols": ["static", "pixels"]}}, "eval.protocols.1"),  # names the bad item
        ({"guard": {"max_lc": 0}}, "guard.max_lc"),
        ({"seed": "zero"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),  # numpy's legacy seeding stops at 2**32 - 1
        ({"optim": {"epochs": True}}, "optim.epochs"),  # strict: a bool is not 1
        ({"optim": {"epochs": 2.0}}, "optim.epochs"),
        ({"optim": {"epochs": "3"}}, "optim.epochs"),
        ({"loss": {"w_lc": True}}, "loss.w_lc"),
        ({"save_adapter": "yes"}, "save_adapter"),
        ({"adapter": {"heads": True}}, "adapter.heads"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_bad_values_name_file_and_dotted_field(tmp_path, data, field):
    path = _write(tmp_path, {"cache": "c", **data})
    with pytest.raises(ConfigError) as caught:
        load_trial_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"'{field}'" in message


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(tmp_path, {"cache": "c", "optim": {"batch_size": 1, "epochs": 0}, "loss": {"w_task": -2}})
    with pytest.raises(ConfigError) as caught:
        load_trial_config(path)
    message = str(caught.value)
    for field in ("optim.batch_size", "optim.epochs", "loss.w_task"):
        assert f"'{field}'" in message


def test_missing_cache_is_an_error(tmp_path):
    path = _write(tmp_path, {"seed": 1})
    with pytest.raises(ConfigError, match="'cache'") as caught:
        load_trial_config(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("text", ["- just\n- a list\n", "cache: [unclosed\n"])
def test_not_a_mapping_or_not_yaml_names_the_file(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_trial_config(path)
    assert str(path) in str(caught.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_trial_config(path)
    assert str(path) in str(caught.value)


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    folder = tmp_path / "trials" / "t1"
    folder.mkdir(parents=True)
    path = _write(folder, {"cache": "../../cache/key", "deepspeed": "ds.json"})
    (folder / "ds.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current directory must not matter
    config = load_trial_config(path)
    assert config.cache == (tmp_path / "cache" / "key").resolve()
    assert config.deepspeed == (folder / "ds.json").resolve()
    assert config.cache.is_absolute() and config.deepspeed.is_absolute()


def test_absolute_paths_are_kept(tmp_path):
    path = _write(tmp_path, {"cache": "/abs/cache"})
    assert load_trial_config(path).cache == Path("/abs/cache")


def test_home_relative_cache_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _write(tmp_path, {"cache": "~/caches/key"})
    assert load_trial_config(path).cache == tmp_path / "home" / "caches" / "key"


PAPER_OPTIM = {"base_lr": 1e-4, "base_batch": 512, "lr_scaling": "linear"}


@pytest.mark.parametrize(
    ("optim", "expected"),
    [
        ({"batch_size": 64}, 1e-3),  # the default: 1e-3 at batch 64 ...
        ({"batch_size": 256}, 2e-3),  # ... scaled by sqrt(batch / 64), Adam's rule
        ({"batch_size": 16}, 5e-4),
        ({"batch_size": 256, "lr_scaling": "none"}, 1e-3),
        ({"batch_size": 512, **PAPER_OPTIM}, 1e-4),  # the paper's rule
        ({"batch_size": 64, **PAPER_OPTIM}, 1e-4 * 64 / 512),
        ({"batch_size": 64, "lr": 3e-3}, 3e-3),  # an explicit lr wins
        ({"batch_size": 128, "base_lr": 2e-4, "base_batch": 256, "lr_scaling": "linear"}, 1e-4),
    ],
)
def test_effective_lr_scales_unless_given(tmp_path, optim, expected):
    config = load_trial_config(_write(tmp_path, {"cache": "c", "optim": optim}))
    assert config.optim.effective_lr == pytest.approx(expected, rel=1e-12)
    resolved = config.resolved()
    assert resolved["optim"]["effective_lr"] == pytest.approx(expected, rel=1e-12)
    # The resolved config records what ran and is plain JSON data.
    assert resolved["optim"]["batch_size"] == optim["batch_size"]
    assert resolved["cache"] == str(config.cache)


def test_primary_protocol_must_be_measured(tmp_path):
    path = _write(tmp_path, {"cache": "c", "eval": {"protocols": ["static"], "primary_protocol": "clip"}})
    with pytest.raises(ConfigError) as caught:
        load_trial_config(path)
    message = str(caught.value)
    assert str(path) in message and "'eval'" in message and "primary_protocol" in message
    with pytest.raises(ConfigError, match="primary_protocol"):
        parse_trial_config({"cache": "c", "eval": {"protocols": []}})
    ok = parse_trial_config({"cache": "c", "eval": {"protocols": ["clip"], "primary_protocol": "clip"}})
    assert ok.eval.primary_protocol == "clip"


def test_parse_names_its_source():
    with pytest.raises(ConfigError, match=r"my-source: field 'optim.batch_size'"):
        parse_trial_config({"cache": "c", "optim": {"batch_size": 0}}, source="my-source")


def test_config_is_frozen():
    config = TrialConfig(cache=Path("/c"))
    with pytest.raises(Exception):
        config.seed = 3  # type: ignore[misc]


def test_strict_types_still_take_ints_for_floats_and_exponent_notation(tmp_path):
    path = _write(tmp_path, "cache: c\nseed: 4294967295\nloss: {w_lc: 10}\noptim: {lr: 1e-5, warmup_fraction: 0}\n")
    config = load_trial_config(path)
    assert config.loss.w_lc == 10.0 and isinstance(config.loss.w_lc, float)
    assert config.optim.lr == 1e-5  # plain YAML 1.1 would read '1e-5' as a string
    assert config.seed == 2**32 - 1


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = _write(tmp_path, "cache: c\noptim:\n  epochs: 3\n  batch_size: 8\n  epochs: 30\n")
    with pytest.raises(ConfigError) as caught:
        load_trial_config(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "line 5: key 'epochs' is given twice (first on line 3)" in message


@pytest.mark.parametrize("text, problem", [("zero: 2\n", "is not JSON"), ("[1, 2]", "must be a JSON object"),
                                           (None, "cannot read")])
def test_a_deepspeed_file_that_is_no_json_object_is_named(tmp_path, text, problem):
    if text is not None:
        (tmp_path / "ds.yaml").write_text(text)
    path = _write(tmp_path, {"cache": "c", "deepspeed": "ds.yaml"})
    with pytest.raises(ConfigError) as caught:
        load_trial_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: field 'deepspeed': {(tmp_path / 'ds.yaml').resolve()}: ")
    assert problem in message and "\n" not in message


@pytest.mark.parametrize(
    ("optim", "steps_per_epoch", "epochs", "total", "warmup"),
    [
        ({}, 1, 500, 500, 25),  # 100 train videos at batch 64: epochs raised to 500 steps
        ({}, 2, 250, 500, 25),
        ({}, 3, 167, 501, 25),  # whole epochs: at least min_steps
        ({}, 1562, 20, 31240, 1562),  # 100k videos: the 20 epochs are the larger budget
        ({"min_steps": 0}, 1, 20, 20, 1),
        ({"epochs": 100, "min_steps": 0, "warmup_fraction": 0.0}, 4, 100, 400, 0),
    ],
)
def test_budget_takes_epochs_or_min_steps_whichever_is_more(optim, steps_per_epoch, epochs, total, warmup):
    config = parse_trial_config({"cache": "/c", "optim": optim})
    budget = config.optim.budget(steps_per_epoch)
    assert (budget.steps_per_epoch, budget.epochs, budget.total_steps, budget.warmup_steps) == (
        steps_per_epoch, epochs, total, warmup)
    recorded = config.resolved(steps_per_epoch)["optim"]["budget"]
    assert recorded == {"steps_per_epoch": steps_per_epoch, "epochs": epochs, "total_steps": total,
                        "warmup_steps": warmup}
    assert "budget" not in config.resolved()["optim"]  # unknown until the train set is


def _starter(tmp_path) -> dict:
    from aam_search.cli_study import STARTER_CONFIG

    return yaml.safe_load(STARTER_CONFIG.format(path=tmp_path / "study.yaml", name="s", manifest="m.csv"))


def test_the_starter_config_trains_as_written(tmp_path):
    """`aam-search init`'s trial settings must move the adapter on a small dataset: enough
    steps at an lr that is not the paper's 1e-4 scaled down to batch 64 (1.25e-5)."""
    trial = parse_trial_config({**_starter(tmp_path)["trial"], "cache": "/c"})
    assert trial.optim.effective_lr >= 5e-4
    assert trial.optim.budget(1).total_steps >= 500  # 100 train videos at batch 64
    assert trial.optim.budget(2).total_steps >= 500


def test_the_starter_space_searches_the_lr(tmp_path):
    from aam_search.spaces import resolve_space

    assert "optim.lr" in resolve_space(_starter(tmp_path)["space"]).params
