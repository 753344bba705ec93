import pytest
import torch
from pydantic import ValidationError
from torch import nn

from aam_search.trainer.losses import LossWeights, latent_consistency, nt_xent, task_loss, total_loss
from aam_search.trainer.model import (
    AdapterConfig,
    AnonymizingAdapter,
    PrivacyProjector,
    TaskHeads,
    build_adapter,
    count_parameters,
)

DIM = 16


@pytest.mark.parametrize("kind", ["attention", "mlp"])
@pytest.mark.parametrize("layers", [1, 3, 5])
@pytest.mark.parametrize("tokens", [1, 7])
def test_fresh_adapter_is_exactly_identity(kind, layers, tokens):
    torch.manual_seed(layers)
    adapter = build_adapter(DIM, AdapterConfig(kind=kind, layers=layers, heads=4, dropout=0.1))
    x = torch.randn(3, tokens, DIM) * 5
    for train in (True, False):  # dropout on a zero branch must still give zero
        adapter.train(train)
        out = adapter(x)
        assert out.shape == x.shape
        assert torch.equal(out, x)


def test_config_validation_names_the_field():
    with pytest.raises(ValidationError, match="layers"):
        AdapterConfig(layers=0)
    with pytest.raises(ValidationError, match="dropout"):
        AdapterConfig(dropout=1.0)
    with pytest.raises(ValidationError, match="kind"):
        AdapterConfig(kind="conv")
    with pytest.raises(ValidationError, match="head"):
        AdapterConfig(head=8)  # typo: extra fields are forbidden


def test_heads_must_divide_dim_for_attention_only():
    with pytest.raises(ValueError, match=r"heads=3.*\b10\b"):
        build_adapter(10, AdapterConfig(heads=3))
    build_adapter(10, AdapterConfig(kind="mlp", heads=3))  # heads is irrelevant to the MLP


def test_forward_rejects_wrong_shape():
    adapter = build_adapter(DIM, AdapterConfig(heads=4))
    with pytest.raises(ValueError, match="16"):
        adapter(torch.randn(2, 3, DIM + 1))
    with pytest.raises(ValueError):
        adapter(torch.randn(2, DIM))


def test_parameter_counts_match_architecture_and_grow():
    d, h = DIM, 4 * DIM
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    assert count_parameters(build_adapter(d, AdapterConfig(layers=1, heads=4))) == block
    mlp_block = 2 * d + (d * h + h) + (h * d + d)
    assert count_parameters(build_adapter(d, AdapterConfig(kind="mlp", layers=1))) == mlp_block
    counts = [count_parameters(build_adapter(d, AdapterConfig(layers=n, heads=4))) for n in (1, 3, 5)]
    assert counts == [block, 3 * block, 5 * block]
    wide = count_parameters(build_adapter(d, AdapterConfig(layers=1, heads=4, ffn_mult=8.0)))
    assert wide > block
    frozen = build_adapter(d, AdapterConfig(layers=1, heads=4)).requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == 0


def _perturb(adapter: AnonymizingAdapter) -> None:
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)


def test_attention_mixes_tokens_and_mlp_does_not():
    torch.manual_seed(0)
    x = torch.randn(2, 5, DIM)
    changed = x.clone()
    changed[:, 4] += torch.randn(DIM)  # not a constant shift: LayerNorm would erase it
    for kind, mixes in (("attention", True), ("mlp", False)):
        adapter = build_adapter(DIM, AdapterConfig(kind=kind, layers=2, heads=4))
        _perturb(adapter)
        moved = (adapter(x)[:, :4] - adapter(changed)[:, :4]).abs().max().item()
        assert (moved > 1e-4) == mixes, kind


def test_task_heads_pool_and_keep_task_names():
    torch.manual_seed(0)
    classes = {"action": 5, "task:a.b": 2, "task:a:b": 3, "task:a_b": 4}
    heads = TaskHeads(DIM, classes)
    tokens = torch.randn(3, 6, DIM)
    logits = heads(tokens)
    assert set(logits) == set(classes)  # no collision between escaped names
    assert {name: out.shape for name, out in logits.items()} == {n: (3, c) for n, c in classes.items()}
    shuffled = heads(tokens[:, torch.randperm(6)])  # mean pooling ignores token order
    for name in classes:
        torch.testing.assert_close(shuffled[name], logits[name])
    # Logits depend only on the mean token: a single token equal to the mean gives the same.
    for name, out in heads(tokens.mean(1, keepdim=True)).items():
        torch.testing.assert_close(out, logits[name])
    reloaded = TaskHeads(DIM, classes)
    reloaded.load_state_dict(heads.state_dict())
    torch.testing.assert_close(reloaded(tokens)["task:a:b"], logits["task:a:b"])


def test_privacy_projector_is_two_layer_mlp():
    projector = PrivacyProjector(DIM, proj_dim=7)
    assert [type(m) for m in projector.net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert projector(torch.randn(4, DIM)).shape == (4, 7)


def _one_training_step(features: torch.Tensor, static: tuple[torch.Tensor, torch.Tensor]):
    torch.manual_seed(1)
    adapter = build_adapter(DIM, AdapterConfig(layers=2, heads=4))
    heads = TaskHeads(DIM, {"action": 3})
    projector = PrivacyProjector(DIM, proj_dim=8)
    before = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    head_before = heads.heads["t_action"].weight.detach().clone()
    optimizer = torch.optim.AdamW([*adapter.parameters(), *heads.parameters()], lr=1e-2)

    adapted = adapter(features)
    l_task, _ = task_loss(heads(adapted), {"action": torch.tensor([0, 1, 2, -1])})
    z1 = projector(adapter(static[0]).mean(1))
    z2 = projector(adapter(static[1]).mean(1))
    loss = total_loss(latent_consistency(adapted, features), l_task, nt_xent(z1, z2), LossWeights())
    assert loss.item() != 0.0
    optimizer.zero_grad()
    loss.backward()
    # The zero-initialised out_proj still receives a gradient: the branch is not frozen.
    assert adapter.blocks[0].attn.out_proj.weight.grad.abs().sum() > 0
    assert adapter.blocks[-1].ffn[-1].weight.grad.abs().sum() > 0
    optimizer.step()
    return adapter, heads, before, head_before


def test_one_step_trains_adapter_and_heads_but_not_features():
    features = torch.randn(4, 5, DIM)
    static = (torch.randn(4, 5, DIM), torch.randn(4, 5, DIM))
    adapter, heads, before, head_before = _one_training_step(features, static)
    assert features.grad is None and not features.requires_grad
    changed = [n for n, p in adapter.named_parameters() if not torch.equal(p, before[n])]
    assert "blocks.0.attn.out_proj.weight" in changed
    assert not torch.equal(heads.heads["t_action"].weight, head_before)
    with torch.no_grad():
        assert not torch.allclose(adapter(features), features)  # no longer the identity


def test_features_passed_as_grad_leaf_stay_unchanged():
    # Someone hands in cached features that require grad: they are not optimised.
    features = torch.randn(4, 5, DIM).requires_grad_(True)
    cached = features.detach().clone()
    static = tuple(torch.randn(4, 5, DIM).requires_grad_(True) for _ in range(2))
    static_cached = [s.detach().clone() for s in static]
    _one_training_step(features, static)
    assert torch.equal(features.detach(), cached)
    for s, c in zip(static, static_cached):
        assert torch.equal(s.detach(), c)


def test_heads_that_do_not_divide_the_width_are_a_config_error_naming_both():
    from aam_search.features.config import ConfigError

    with pytest.raises(ConfigError, match=r"^adapter\.heads=7 does not divide the feature width 32 .*\[1, 2, 4, 8, 16, 32\]$"):
        build_adapter(32, AdapterConfig(heads=7))


def test_the_train_command_reports_bad_heads_in_one_line_before_training(small_cache, tmp_path, capsys):
    import json

    from aam_search.cli import main

    trial = tmp_path / "trial.yaml"
    trial.write_text(f"cache: {small_cache.path}\nadapter: {{heads: 7}}\n"
                     "optim: {epochs: 1, batch_size: 4, head_pretrain_epochs: 1}\n")
    assert main(["train", "--config", str(trial), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "adapter.heads=7 does not divide the feature width 32" in err and "Traceback" not in err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "failed" and result["epochs_done"] == 0 and "adapter.heads=7" in result["reason"]
