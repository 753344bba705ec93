"""aam-search: search the privacy-utility trade-off of Anonymizing Adapter Modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_adapter"]

if TYPE_CHECKING:
    from aam_search.tracking.adapter import load_adapter


def __getattr__(name: str) -> Any:
    # Imported on first use: `import aam_search` stays light (no torch, no MLflow).
    if name == "load_adapter":
        from aam_search.tracking.adapter import load_adapter

        return load_adapter
    raise AttributeError(f"module 'aam_search' has no attribute {name!r}")
