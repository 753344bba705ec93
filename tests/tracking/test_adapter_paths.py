"""A model's artifact paths stay inside the model: a crafted MLmodel reads no other file.

Whoever can write the MLflow registry (or hand over a model folder) chooses the MLmodel
file. Its ``artifacts.adapter.path`` of ``../../...``, an absolute path, or a symlink in the
model that leads elsewhere would make ``load_adapter`` (and the pyfunc) read any local
safetensors file: another study's adapter, or any file an attacker wants to probe.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aam_search.tracking.adapter import load_adapter
from aam_search.tracking.promote import PYFUNC_CODE
from aam_search.tracking.pyfunc import AdapterModel
from aam_search.trainer.checkpoint import CheckpointError, save_checkpoint
from aam_search.trainer.model import AdapterConfig, build_adapter

DIM = 8


def checkpoint(path: Path, scale: float) -> Path:
    adapter = build_adapter(DIM, AdapterConfig(kind="mlp", layers=1))
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.fill_(scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, adapter, None)


def model_folder(root: Path, adapter_path: str) -> Path:
    """An MLflow-like model folder whose MLmodel names ``adapter_path``."""
    folder = root / "model"
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    mlmodel = {"flavors": {"python_function": {"artifacts": {"adapter": {"path": adapter_path}},
                                               "loader_module": "mlflow.pyfunc.model"}}}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


@pytest.fixture
def outside(tmp_path) -> Path:
    """A valid adapter checkpoint that belongs to no model (say, another study's)."""
    return checkpoint(tmp_path / "elsewhere" / "secret" / "other.safetensors", 0.5)


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_an_mlmodel_path_out_of_the_model_is_refused(tmp_path, outside, how):
    relative = "../elsewhere/secret/other.safetensors" if how == "dotdot" else str(outside)
    folder = model_folder(tmp_path, relative)
    assert (folder / relative).is_file()  # the path does reach the other file
    with pytest.raises(CheckpointError, match="model folder"):
        load_adapter(folder)


def test_a_symlink_out_of_the_model_is_refused(tmp_path, outside):
    folder = model_folder(tmp_path, "artifacts/adapter.safetensors")
    os.symlink(outside, folder / "artifacts" / "adapter.safetensors")
    with pytest.raises(CheckpointError, match="out of the model folder"):
        load_adapter(folder)
    (folder / "MLmodel").unlink()  # found by its extension alone: still refused
    with pytest.raises(CheckpointError, match="out of the model folder"):
        load_adapter(folder)


def test_paths_inside_the_model_load(tmp_path, outside):
    folder = model_folder(tmp_path, "artifacts/adapter.safetensors")
    checkpoint(folder / "artifacts" / "adapter.safetensors", 0.25)
    features = torch.ones(1, 2, DIM)
    inside = load_adapter(folder)(features)
    # a symlink that stays inside the model is fine
    (folder / "MLmodel").write_text((folder / "MLmodel").read_text().replace("artifacts/adapter", "link"))
    os.symlink(folder / "artifacts" / "adapter.safetensors", folder / "link.safetensors")
    assert torch.equal(load_adapter(folder)(features), inside)
    assert not torch.equal(load_adapter(outside)(features), inside)  # a file given directly is the user's choice


def test_a_crafted_model_in_mlflow_reads_nothing_outside(tmp_path, outside):
    """The attack as it comes: a model in the tracking store whose MLmodel climbs out."""
    from aam_search.tracking.store import connect, default_tracking_uri

    uri = default_tracking_uri(tmp_path / "store")
    client = connect(uri)
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "store" / "art").as_uri())
    run = client.create_run(experiment)
    # from the artifact root of the downloaded model, climb to the file elsewhere
    folder = model_folder(tmp_path / "crafted", "../" * 12 + str(outside).lstrip("/"))
    client.log_artifacts(run.info.run_id, str(folder), "adapter")
    with pytest.raises(CheckpointError, match="out of the model folder"):
        load_adapter(f"runs:/{run.info.run_id}/adapter", tracking_uri=uri)


def test_the_pyfunc_reads_its_adapter_only_from_its_model(tmp_path, outside):
    import mlflow.pyfunc

    inside = checkpoint(tmp_path / "source" / "adapter.safetensors", 0.25)
    saved = tmp_path / "saved"
    mlflow.pyfunc.save_model(str(saved), python_model=str(PYFUNC_CODE), artifacts={"adapter": str(inside)},
                             pip_requirements=["torch"])
    model = mlflow.pyfunc.load_model(str(saved))  # the honest model loads
    assert model.predict(np.ones((1, 2, DIM), dtype=np.float32)).shape == (1, 2, DIM)

    meta = yaml.safe_load((saved / "MLmodel").read_text())
    for crafted in ("../elsewhere/secret/other.safetensors", str(outside)):
        meta["flavors"]["python_function"]["artifacts"]["adapter"]["path"] = crafted
        (saved / "MLmodel").write_text(yaml.safe_dump(meta))
        with pytest.raises(Exception, match="outside the model folder"):
            mlflow.pyfunc.load_model(str(saved))

    # a model saved before its folder was known (no model_dir): climbing is still refused
    with pytest.raises(CheckpointError, match="out of the model folder"):
        AdapterModel()._adapter_path(str(saved / "../elsewhere/secret/other.safetensors"))
