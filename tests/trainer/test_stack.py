"""Stacked trials: each member of a stack ends as that member's trial run alone would (same
seed, deterministic CPU), a diverging member fails alone, and what cannot stack is refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from aam_search.features.config import ConfigError
from aam_search.protocol import ADAPTER_FILE, METRICS_FILE, RESULT_FILE, TRIAL_FILE, Status, read_metrics
from aam_search.trainer.config import parse_trial_config
from aam_search.trainer.stack import is_shape_field, masked_nt_xent, memory_cap, stack_key
from aam_search.trainer.stack_recipe import STACK_FIELD, check_stackable, run_stack
from aam_search.trainer.losses import nt_xent
from aam_search.trainer.train import run_trial

# Float32 in another order of operations (vmapped GEMMs, AdamW in a stacked layout): weights
# agree to about 1e-6 after these few steps; the attackers then see the same features.
WEIGHT_TOLERANCE = 1e-4
LOSS_RTOL = 1e-4
METRIC_TOLERANCE = 1e-3


def _config(cache, **changes):
    heads = 4 if cache.dim % 4 == 0 else 1
    data = {
        "cache": str(cache.path),
        "seed": 0,
        "adapter": {"kind": "attention", "layers": 1, "heads": heads, "ffn_mult": 2.0},
        "optim": {"epochs": 2, "min_steps": 0, "batch_size": 4, "head_pretrain_epochs": 2},
        "eval": {"protocols": ["static"], "primary_protocol": "static", "attacker_epochs": 5, "probe_epochs": 5,
                 "attackers": ["linear", "mlp"], "bootstrap_resamples": 0, "crossfit_folds": 0},
    }
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return parse_trial_config(data)


MEMBERS = [
    {"loss": {"w_lc": 100.0}},
    {"loss": {"w_lc": 3.0, "temperature": 0.3, "w_privacy": 2.0}, "optim": {"lr": 3e-3, "grad_clip": 0.5}},
    {"loss": {"w_task": 0.2}, "optim": {"lr": 5e-4, "weight_decay": 0.0}},
]


def _compare(stacked_dir, alone_dir):
    stacked, alone = (json.loads((d / RESULT_FILE).read_text()) for d in (stacked_dir, alone_dir))
    assert stacked["status"] == alone["status"] == Status.COMPLETED
    for key in ("utility", "leakage", "combined_score"):
        assert stacked[key] == pytest.approx(alone[key], abs=METRIC_TOLERANCE), key
    lines = read_metrics(stacked_dir / METRICS_FILE), read_metrics(alone_dir / METRICS_FILE)
    assert len(lines[0]) == len(lines[1]) == alone["epochs_done"]
    for mine, theirs in zip(*lines):
        assert set(mine) == set(theirs)
        for key in ("loss", "l_lc", "l_task", "l_privacy", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=LOSS_RTOL, abs=1e-7), key
    weights = load_file(stacked_dir / ADAPTER_FILE), load_file(alone_dir / ADAPTER_FILE)
    assert set(weights[0]) == set(weights[1])
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=WEIGHT_TOLERANCE), name
    return stacked


@pytest.mark.parametrize("seeds", [(0, 0, 0), (0, 1)], ids=["shared-batches", "own-seeds"])
def test_each_stacked_member_ends_as_it_would_alone(small_cache, tmp_path, seeds):
    configs = [_config(small_cache, seed=seed, **MEMBERS[i]) for i, seed in enumerate(seeds)]
    outs = [tmp_path / f"stacked-{i}" for i in range(len(configs))]
    results = run_stack(configs, outs)
    assert [r["status"] for r in results] == [Status.COMPLETED] * len(configs)
    for i, config in enumerate(configs):
        run_trial(config, tmp_path / f"alone-{i}")
        result = _compare(outs[i], tmp_path / f"alone-{i}")
        assert result[STACK_FIELD]["size"] == len(configs) and result[STACK_FIELD]["position"] == i
        assert (outs[i] / TRIAL_FILE).is_file()


def test_members_measured_together_end_as_they_would_alone(small_cache, tmp_path, monkeypatch):
    """The joint evaluation (on CUDA by default) forced on the CPU: each member's result.json
    still holds its own numbers, and says its evaluation was shared."""
    import aam_search.trainer.stack_recipe as stack_recipe

    monkeypatch.setattr(stack_recipe, "JOINT_EVAL_DEVICES", ("cpu",))
    configs = [_config(small_cache, **MEMBERS[i]) for i in range(2)]
    outs = [tmp_path / f"stacked-{i}" for i in range(2)]
    assert [r["status"] for r in run_stack(configs, outs)] == [Status.COMPLETED] * 2
    for i, config in enumerate(configs):
        run_trial(config, tmp_path / f"alone-{i}")
        result = _compare(outs[i], tmp_path / f"alone-{i}")
        assert result["timings"]["eval_together"] == 2
        assert result["timings"]["eval_s"] >= result["timings"]["eval_shared_s"] > 0


def test_a_diverging_member_fails_alone(small_cache, tmp_path):
    configs = [_config(small_cache), _config(small_cache, optim={"lr": 1e6, "grad_clip": None},
                                             guard={"max_lc": 1e-3})]
    outs = [tmp_path / "good", tmp_path / "bad"]
    results = run_stack(configs, outs)
    assert results[0]["status"] == Status.COMPLETED
    assert results[1]["status"] == Status.DIVERGED
    bad = json.loads((outs[1] / RESULT_FILE).read_text())
    assert bad["status"] == Status.DIVERGED and "diverged in epoch" in bad["reason"]
    assert bad["retryable"] is False and not (outs[1] / ADAPTER_FILE).exists()
    good = json.loads((outs[0] / RESULT_FILE).read_text())
    assert good["epochs_done"] == 2 and (outs[0] / ADAPTER_FILE).is_file()


def test_members_of_another_shape_are_refused_naming_the_member(small_cache):
    base = _config(small_cache)
    with pytest.raises(ConfigError, match="member 1 differs"):
        check_stackable([base, _config(small_cache, adapter={"layers": 2})])
    with pytest.raises(ConfigError, match="member 1 cannot be stacked: the adversarial"):
        check_stackable([base, _config(small_cache, loss={"privacy_objective": "adversarial"})])
    assert stack_key(base) == stack_key(_config(small_cache, seed=4, loss={"w_lc": 1.0}, optim={"lr": 1.0}))


def test_shape_fields_are_the_architecture_and_the_budget():
    assert is_shape_field("adapter.layers") and is_shape_field("adapter.dropout")
    assert is_shape_field("optim.batch_size") and is_shape_field("loss.w_hsic")
    assert not is_shape_field("loss.w_lc") and not is_shape_field("optim.lr") and not is_shape_field("seed")


def test_masked_nt_xent_is_nt_xent_on_the_kept_rows():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    mask = torch.tensor([True, False, True, True, False, True])
    assert torch.allclose(masked_nt_xent(z1, z2, mask, torch.tensor(0.2)), nt_xent(z1[mask], z2[mask], 0.2))
    one = torch.tensor([False, True, False, False, False, False])
    assert masked_nt_xent(z1, z2, one, 0.1) == 0


def test_memory_cap_keeps_at_least_one_member():
    assert memory_cap(per_member=100, available=1000, fraction=0.5) == 5
    assert memory_cap(per_member=10**12, available=1000) == 1


def test_a_stack_larger_than_memory_is_cut_with_a_warning_not_an_oom(small_cache, tmp_path, monkeypatch, capsys):
    import aam_search.trainer.stack_recipe as recipe

    monkeypatch.setattr(recipe, "available_bytes", lambda device: 1)  # room for one member at a time
    configs = [_config(small_cache, seed=i) for i in range(2)]
    results = run_stack(configs, [tmp_path / "a", tmp_path / "b"])
    assert [r["status"] for r in results] == [Status.COMPLETED] * 2
    assert "stack of 2 cut to stacks of 1" in capsys.readouterr().err
