"""Built-in search spaces, drawn from the paper's ablations with ranges wide enough to hold them.

They are written in the same form a user's YAML file takes, so each one doubles as an
example. ``paper`` is a grid: Optuna's ``GridSampler`` walks it point by point, with the
paper's optimiser (lr 1e-4 at batch 512, scaled linearly; 100 epochs) fixed. ``privacy``
searches the objective mix beyond the paper: its HSIC penalty and eraser need ``attr:``
labels in the train split.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "loss-weights": {
        "description": "the loss weights and the NT-Xent temperature, log-uniform",
        "params": {
            # The paper's ablation is w_LC in {0, 1, 10, 100, 1000}. 0 cannot lie in a log
            # range, so this range starts at 0.1; w_lc = 0 is reachable through `paper`.
            "loss.w_lc": {"type": "float", "low": 0.1, "high": 1000.0, "log": True},
            "loss.w_privacy": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
            "loss.w_task": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
            "loss.temperature": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
            # Around the default 1e-3 (docs/decisions.md): 1e-4 barely moves the adapter in
            # the minimum 500 steps, 1e-2 is where attention adapters start to diverge.
            "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
    },
    "adapter-size": {
        "description": "the adapter's shape: MLP or self-attention, 1-6 layers, 4/8/16 heads",
        "params": {
            "adapter.kind": {"type": "categorical", "choices": ["attention", "mlp"]},
            "adapter.layers": {"type": "int", "low": 1, "high": 6},
            # heads must divide the encoder width; 4, 8 and 16 divide the usual 384/768/1024
            "adapter.heads": {
                "type": "categorical",
                "choices": [4, 8, 16],
                "condition": {"param": "adapter.kind", "in": ["attention"]},
            },
            "adapter.ffn_mult": {"type": "categorical", "choices": [1.0, 2.0, 4.0]},
            "adapter.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
    },
    "paper": {
        "description": "the paper's w_LC ablation x its layer ablation: a 15-point grid",
        "params": {
            "loss.w_lc": {"type": "categorical", "choices": [0.0, 1.0, 10.0, 100.0, 1000.0]},
            "adapter.layers": {"type": "categorical", "choices": [1, 3, 5]},
            "adapter.kind": {"type": "fixed", "value": "attention"},
            "adapter.heads": {"type": "fixed", "value": 8},
            # The paper's optimiser: 1e-4 at batch 512, scaled linearly, for 100 epochs.
            "optim.lr": {"type": "fixed", "value": None},
            "optim.base_lr": {"type": "fixed", "value": 1e-4},
            "optim.base_batch": {"type": "fixed", "value": 512},
            "optim.lr_scaling": {"type": "fixed", "value": "linear"},
            "optim.epochs": {"type": "fixed", "value": 100},
            "optim.min_steps": {"type": "fixed", "value": 0},
        },
    },
    "full": {
        "description": "loss-weights + adapter-size + the learning rate and privacy objective",
        "include": ["loss-weights", "adapter-size"],
        "params": {
            "optim.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "loss.privacy_objective": {"type": "categorical", "choices": ["selfsup", "adversarial"]},
        },
    },
    "privacy": {
        "description": "the privacy objective mix (NT-Xent, HSIC penalty, linear eraser) with the loss weights and lr",
        "params": {
            "loss.w_lc": {"type": "float", "low": 0.1, "high": 1000.0, "log": True},
            "loss.w_task": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
            "loss.w_privacy": {"type": "float", "low": 0.1, "high": 30.0, "log": True},
            "loss.privacy_objective": {"type": "categorical", "choices": ["selfsup", "adversarial"]},
            # needs attr: labels; 0.01 is as good as off, so the low end covers "no HSIC"
            "loss.w_hsic": {"type": "float", "low": 0.01, "high": 100.0, "log": True},
            "loss.hsic_condition": {"type": "categorical", "choices": ["none", "action"]},
            "loss.eraser": {"type": "categorical", "choices": [True, False]},  # needs attr: labels
            "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)
