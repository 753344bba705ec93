"""A real two-rank trial on CPU: ``accelerate launch --num_processes 2 --cpu`` (gloo) runs
``aam-search train``; only rank 0 writes, and both ranks end with the same parameters."""

import re
import socket
import subprocess
import sys

import pytest

from aam_search.protocol import ADAPTER_FILE, METRICS_FILE, RESULT_FILE, TRIAL_FILE, read_metrics
from tests.trainer.test_train import RESULT_KEYS, _child_env, _config_data, _strict_json, _write_yaml


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_trial(small_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-rank")
    # Batch 2: the small cache's train videos make at least one step per rank.
    data = _config_data(small_cache, optim={"epochs": 2, "batch_size": 2, "head_pretrain_epochs": 1},
                        guard={"check_every": 1})
    config = _write_yaml(root / "trial.yaml", data)
    out = root / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
               "--num_machines", "1", "--main_process_port", str(_free_port()), "--dynamo_backend", "no",
               "-m", "aam_search.cli", "train", "--config", str(config), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=400)
    return proc, out, data


def test_two_rank_trial_completes_and_only_rank_0_writes(two_rank_trial):
    proc, out, data = two_rank_trial
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    result = _strict_json(out / RESULT_FILE)
    assert RESULT_KEYS <= set(result) and result["status"] == "completed", result.get("reason")
    assert result["runtime"]["processes"] == 2
    assert result["runtime"]["distributed_type"] == "MULTI_CPU"
    assert result["runtime"]["data_residency"] == "device"
    assert result["epochs_done"] == data["optim"]["epochs"]
    # One writer: one line per epoch (two ranks writing would double them), one of each file.
    lines = read_metrics(out / METRICS_FILE)
    assert [line["epoch"] for line in lines] == list(range(data["optim"]["epochs"]))
    assert len((out / METRICS_FILE).read_text().splitlines()) == data["optim"]["epochs"]
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_FILE, METRICS_FILE, RESULT_FILE, TRIAL_FILE])
    assert log.count("training data: device") == 1  # logged by rank 0 only


def test_both_ranks_end_with_the_same_parameters(two_rank_trial):
    proc, _, _ = two_rank_trial
    digests = dict(re.findall(r"rank (\d): trained parameters sha256 ([0-9a-f]{64})", proc.stdout + proc.stderr))
    assert set(digests) == {"0", "1"}, (proc.stdout + proc.stderr)[-3000:]
    assert digests["0"] == digests["1"]
