"""The MLflow pyfunc of a promoted adapter: ``[N, L, D]`` features in, anonymized features out.

The model is logged as *models from code* (:mod:`aam_search.tracking.pyfunc_code` is the
code file), so nothing is pickled: loading runs that file, and the weights come from the
safetensors checkpoint stored in the model as the ``adapter`` artifact, read by
:func:`aam_search.trainer.checkpoint.load_checkpoint` (which unpickles nothing either).

Inputs are float32 arrays (the model signature's dtype: MLflow refuses others before the
model sees them; :func:`aam_search.load_adapter` has no such restriction).
``model_config`` (``mlflow.pyfunc.load_model(uri, model_config={...})``) may set
``device`` (default ``cpu``) and ``batch_size`` (rows per forward pass, default 256).
"""

from typing import Any

import mlflow.pyfunc
import numpy as np


class AdapterModel(mlflow.pyfunc.PythonModel):
    def __init__(self, model_dir: str | None = None) -> None:
        # The model's own folder (the code file's, when MLflow loads a saved model): every
        # artifact it reads must lie inside it, whatever the MLmodel file says.
        self.model_dir = model_dir

    def _adapter_path(self, path: str) -> str:
        from pathlib import Path

        from aam_search.trainer.checkpoint import CheckpointError

        model_dir = getattr(self, "model_dir", None)
        if model_dir is not None and (Path(model_dir) / "MLmodel").is_file():
            root = Path(model_dir).resolve()
            target = Path(path).resolve()
            if not target.is_relative_to(root):
                raise CheckpointError(f"{model_dir}: the adapter artifact {path!r} lies outside the model folder")
            return str(target)
        if ".." in Path(path).parts:  # a model saved before its folder was known: at least no climbing
            raise CheckpointError(f"the adapter artifact {path!r} leads out of the model folder")
        return path

    def load_context(self, context: Any) -> None:
        from aam_search.trainer.checkpoint import load_checkpoint

        config = dict(context.model_config or {})
        self.device = str(config.get("device", "cpu"))
        self.batch_size = int(config.get("batch_size", 256))
        path = self._adapter_path(context.artifacts["adapter"])
        self.adapter = load_checkpoint(path).adapter.to(self.device).eval()

    # The np.ndarray hint (resolved at runtime: no postponed annotations here) tells MLflow
    # not to infer a schema from hints; the logged tensor signature describes the input.
    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch

        if isinstance(model_input, dict) and len(model_input) == 1:  # {"features": array}
            model_input = next(iter(model_input.values()))
        array = np.asarray(model_input, dtype=np.float32)
        if array.ndim != 3 or array.shape[-1] != self.adapter.dim:
            raise ValueError(f"expected features of shape [N, L, {self.adapter.dim}], got {list(array.shape)}")
        batch_size = int((params or {}).get("batch_size", self.batch_size))
        tokens = torch.from_numpy(np.ascontiguousarray(array))
        out = []
        with torch.no_grad():
            for start in range(0, len(tokens), batch_size):
                out.append(self.adapter(tokens[start:start + batch_size].to(self.device)).float().cpu())
        if not out:
            return np.zeros_like(array)
        return torch.cat(out).numpy()
