"""``aam-search anonymize`` refuses a directory as --out (leaving nothing behind) and --batch-size 0."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from aam_search.cli import main
from aam_search.trainer.checkpoint import save_checkpoint
from aam_search.trainer.model import AdapterConfig, build_adapter


@pytest.fixture
def files(tmp_path):
    adapter = tmp_path / "adapter.safetensors"
    save_checkpoint(adapter, build_adapter(8, AdapterConfig(layers=1, heads=2)), None)
    source = tmp_path / "in.safetensors"
    save_file({"features": torch.randn(5, 3, 8)}, str(source))
    return adapter, source


def test_out_may_not_be_a_directory_and_nothing_is_left_behind(files, tmp_path, capsys):
    adapter, source = files
    out = tmp_path / "results"
    out.mkdir()
    assert main(["anonymize", "--model", str(adapter), "--in", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: is a directory" in err.replace("\n", "") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors", "in.safetensors", "results"]
    assert not any(out.iterdir())


def test_batch_size_must_be_positive(files, tmp_path, capsys):
    adapter, source = files
    for size in ("0", "-3"):
        with pytest.raises(SystemExit) as caught:
            main(["anonymize", "--model", str(adapter), "--in", str(source), "--out", str(tmp_path / "o.st"),
                  "--batch-size", size])
        assert caught.value.code == 2
        assert "--batch-size: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o.st").exists()


def test_a_good_run_writes_only_the_output(files, tmp_path):
    adapter, source = files
    target = tmp_path / "o.safetensors"
    assert main(["anonymize", "--model", str(adapter), "--in", str(source), "--out", str(target),
                 "--batch-size", "2"]) == 0
    assert load_file(str(target))["features"].shape == (5, 3, 8)
    assert not (tmp_path / "o.safetensors.tmp").exists()


def test_the_library_call_refuses_batch_size_zero(files, tmp_path):
    from aam_search.trainer.checkpoint import CheckpointError
    from aam_search.tracking.adapter import anonymize_file

    adapter, source = files
    with pytest.raises(CheckpointError, match="batch size must be at least 1, got 0"):
        anonymize_file(str(adapter), source, tmp_path / "o.safetensors", batch_size=0)
