"""The one learning-rate schedule: linear warm-up, then cosine decay to zero.

Used by the trial's training loop (per step, with warm-up), the stacked recipe (per member)
and the attackers' stacked AdamW (no warm-up).
"""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """The rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine decay
    reaching 0 at ``total_steps`` and staying there."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
