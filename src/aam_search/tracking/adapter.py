"""Plug-and-play use of a promoted adapter: load it as a module, or anonymize a features file.

``load_adapter("models:/aam-<study>@champion", tracking_uri=...)`` returns the adapter as
a ``torch.nn.Module`` in eval mode, ready to sit on the frozen encoder's output in any
job. It reads the safetensors checkpoint inside the registered model with
:func:`~aam_search.trainer.checkpoint.load_checkpoint`; no model code is run and nothing
is unpickled.

Features files (``aam-search anonymize``) are safetensors files holding one float tensor
``features`` of shape ``[N, L, D]``: N clips, L tokens per clip (1 for pooled encoders),
D the encoder width the adapter was trained on. The output has the same key, shape and
dtype; its metadata names the model that wrote it.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from aam_search.trainer.checkpoint import CheckpointError, load_checkpoint

FEATURES_KEY = "features"
REMOTE_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:", "http://", "https://", "s3://", "gs://", "dbfs:/")


def confined(folder: str | Path, relative: str | Path, source: str) -> Path:
    """``folder/relative``, refused unless it stays inside ``folder``.

    A model's files name each other (the MLmodel's artifact paths), and a model is handed
    over by whoever could write it: an absolute path, ``..`` or a symlink that leads out of
    the model folder would read any file of this machine. The check is on the resolved path
    (symlinks followed), so a link inside the folder to a file inside it is fine.
    """
    root = Path(folder).resolve()
    text = str(relative)
    if not text or Path(text).is_absolute():
        raise CheckpointError(f"{source}: artifact path {text!r} must be relative to the model folder")
    target = (root / text).resolve()
    if not target.is_relative_to(root):
        raise CheckpointError(f"{source}: artifact path {text!r} leads out of the model folder")
    return target


def _lookup(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _adapter_in_model_dir(folder: Path, source: str) -> Path:
    """The checkpoint inside an MLflow model folder (named by its MLmodel file), never a
    file outside it."""
    import yaml

    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        try:
            meta = yaml.safe_load(mlmodel.read_text()) or {}
        except yaml.YAMLError as error:
            raise CheckpointError(f"{source}: unreadable MLmodel ({error})") from None
        relative = _lookup(meta, "flavors", "python_function", "artifacts", "adapter", "path")
        if relative is not None:
            path = confined(folder, str(relative), source)
            if path.is_file():
                return path
    found = [confined(folder, p.relative_to(folder), source) for p in sorted(folder.rglob("*.safetensors"))]
    if len(found) == 1:
        return found[0]
    raise CheckpointError(f"{source}: not an aam-search adapter model (no adapter.safetensors inside)")


def load_adapter(uri: str | Path, tracking_uri: str | None = None, map_location: str = "cpu") -> torch.nn.Module:
    """The adapter of a registered model (``models:/name@alias``, ``models:/name/3``,
    ``runs:/...``) or of a local ``adapter.safetensors`` (or downloaded model folder),
    as an ``nn.Module`` in eval mode. ``tracking_uri`` names the MLflow store of a
    ``models:/`` URI (default: MLflow's, i.e. ``MLFLOW_TRACKING_URI``)."""
    text = str(uri)
    if text.startswith(REMOTE_PREFIXES):
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        from aam_search.tracking.store import fluent_uri, quiet_downloads, resolve_tracking_uri

        # models:/ URIs resolve through MLflow's global registry URI, whatever is passed down.
        context = fluent_uri(resolve_tracking_uri(tracking_uri, ".")) if tracking_uri else contextlib.nullcontext()
        with tempfile.TemporaryDirectory(prefix="aam-adapter-") as folder, context, quiet_downloads():
            try:
                local = Path(download_artifacts(artifact_uri=text, dst_path=folder))
            except MlflowException as error:
                raise CheckpointError(f"{text}: cannot fetch the model ({error.message})") from None
            if not local.resolve().is_relative_to(Path(folder).resolve()):
                raise CheckpointError(f"{text}: the downloaded model leads out of its download folder")
            path = local if local.is_file() else _adapter_in_model_dir(local, text)
            return load_checkpoint(path, map_location=map_location).adapter.eval()
    path = Path(text).expanduser()
    if path.is_dir():
        path = _adapter_in_model_dir(path, text)
    return load_checkpoint(path, map_location=map_location).adapter.eval()


@torch.no_grad()
def apply_adapter(adapter: torch.nn.Module, features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``[N, L, D] -> [N, L, D]`` in batches; computed in float32, returned in the input dtype."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(adapter.parameters(), torch.empty(0)).device
    out = [adapter(features[i:i + batch_size].to(device, torch.float32)).cpu() for i in range(0, len(features), batch_size)]
    result = torch.cat(out) if out else features.float().clone()
    return result.to(features.dtype) if features.is_floating_point() else result


def anonymize_file(model: str, source: str | Path, target: str | Path, *, tracking_uri: str | None = None,
                   batch_size: int = 256) -> dict[str, Any]:
    """Read ``features`` [N, L, D] from ``source``, apply the adapter, write ``target``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, target = Path(source), Path(target)
    if target.is_dir():
        raise CheckpointError(f"{target}: is a directory; the output is the safetensors file to write")
    if batch_size < 1:
        raise CheckpointError(f"batch size must be at least 1, got {batch_size}")
    if not source.is_file():
        raise CheckpointError(f"{source}: no such features file")
    try:
        with safe_open(str(source), framework="pt") as handle:
            keys = list(handle.keys())
            if FEATURES_KEY not in keys:
                raise CheckpointError(f"{source}: no tensor named {FEATURES_KEY!r} (it has: {', '.join(keys) or 'none'})")
            features = handle.get_tensor(FEATURES_KEY)
            metadata = dict(handle.metadata() or {})
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{source}: not a readable safetensors file ({error})") from None
    adapter = load_adapter(model, tracking_uri=tracking_uri)
    if features.dim() != 3 or features.shape[-1] != adapter.dim or not features.is_floating_point():
        raise CheckpointError(f"{source}: {FEATURES_KEY!r} must be a float tensor [N, L, {adapter.dim}], "
                              f"got {features.dtype} {list(features.shape)}")
    result = apply_adapter(adapter, features, batch_size=batch_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        save_file({FEATURES_KEY: result.contiguous()}, str(tmp), metadata={**metadata, "aam_search.anonymized_by": model})
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)  # never leave a half-written <out>.tmp behind
    return {"rows": int(features.shape[0]), "shape": list(features.shape), "dtype": str(features.dtype),
            "output": str(target)}
