"""Import torchvision even when its compiled ops cannot load.

PyPI's torchvision wheels are built against CUDA torch. Next to a CPU torch (the pinned
``torch==2.13.0+cpu``) their ``_C`` extension fails to load, and torchvision 0.28's own
``_meta_registrations`` then raises ``operator torchvision::nms does not exist`` on import,
which also breaks every ``transformers`` model (transformers imports torchvision when it
is installed). The video models are plain PyTorch and never call those ops, so we declare
the two op schemas that import needs (no kernels: calling ``torchvision.ops.nms`` still fails
with torchvision's own "Couldn't load custom C++ ops" error) and import again.

Where torchvision and torch match (a CUDA torch, or both ``+cpu`` wheels from the PyTorch
index that the Makefile asks first) the first import succeeds and nothing is declared.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

_MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fragment: Any = None  # kept alive: dropping the Library object would undo the declarations


def import_torchvision() -> ModuleType | None:
    """torchvision, or None when it is not installed."""
    global _fragment
    try:
        import torchvision
    except ImportError:
        return None
    except RuntimeError as error:
        if "torchvision::" not in str(error) or _fragment is not None:
            raise
        import torch

        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            if name != "torchvision.extension":  # keep the one that already tried to load _C
                del sys.modules[name]
        _fragment = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _MISSING_OP_SCHEMAS:
            _fragment.define(schema)
        import torchvision
    return torchvision
