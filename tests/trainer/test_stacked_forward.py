"""The written-out stacked forward is each member's own modules, member by member."""

import pytest
import torch
from torch.func import stack_module_state

from aam_search.trainer.model import AdapterConfig, TaskHeads, build_adapter
from aam_search.trainer.stacked_forward import adapter_forward, heads_forward

# float32, another order of operations (baddbmm against addmm, one attention call for all)
TOLERANCE = 1e-5


def _members(config: AdapterConfig, dim: int, count: int):
    adapters = []
    for seed in range(count):
        torch.manual_seed(seed)
        adapter = build_adapter(dim, config)
        for param in adapter.parameters():  # off the identity start, so every weight matters
            torch.nn.init.normal_(param, std=0.2)
        adapters.append(adapter.eval())
    params, _ = stack_module_state(adapters)
    return adapters, params


@pytest.mark.parametrize("config, tokens", [
    (AdapterConfig(kind="attention", layers=2, heads=4, ffn_mult=2.0), 5),
    (AdapterConfig(kind="attention", layers=1, heads=2, ffn_mult=1.5), 1),  # a pooled encoder: L = 1
    (AdapterConfig(kind="mlp", layers=2, ffn_mult=3.0), 3),
])
def test_stacked_adapters_are_each_members_own(config, tokens):
    adapters, params = _members(config, dim=16, count=3)
    inputs = torch.randn(3, 7, tokens, 16)
    stacked = adapter_forward(adapters[0], params, inputs, training=False)
    for k, adapter in enumerate(adapters):
        with torch.no_grad():
            alone = adapter(inputs[k])
        assert torch.allclose(stacked[k], alone, atol=TOLERANCE), k
    # gradients flow to each member's own slices only
    stacked[1].sum().backward()
    grads = [p.grad for p in params.values() if p.grad is not None]
    assert grads and all(g[0].abs().max() == 0 and g[2].abs().max() == 0 for g in grads)
    assert any(g[1].abs().max() > 0 for g in grads)


def test_stacked_heads_are_each_members_own():
    classes = {"action": 5, "task:speed": 3}
    heads = []
    for seed in range(2):
        torch.manual_seed(seed)
        heads.append(TaskHeads(8, classes))
    params, _ = stack_module_state(heads)
    tokens = torch.randn(2, 6, 4, 8)
    stacked = heads_forward(heads[0], params, tokens)
    assert set(stacked) == set(classes)
    for k, module in enumerate(heads):
        with torch.no_grad():
            alone = module(tokens[k])
        for task in classes:
            assert torch.allclose(stacked[task][k], alone[task], atol=TOLERANCE), (k, task)


def test_stacked_dropout_draws_each_members_own_mask():
    adapters, params = _members(AdapterConfig(kind="mlp", layers=1, dropout=0.5), dim=8, count=2)
    same = torch.randn(1, 4, 2, 8).expand(2, 4, 2, 8)
    torch.manual_seed(0)
    out = adapter_forward(adapters[0], {k: v[[0, 0]] for k, v in params.items()}, same, training=True)
    assert not torch.allclose(out[0], out[1])  # the same weights and inputs, two masks
    evaluated = adapter_forward(adapters[0], {k: v[[0, 0]] for k, v in params.items()}, same, training=False)
    assert torch.equal(evaluated[0], evaluated[1])
