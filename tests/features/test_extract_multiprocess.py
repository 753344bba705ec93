"""Two extraction processes (``accelerate launch --num_processes 2 --cpu``) write the same cache as one.

Shard ``i`` belongs to rank ``i % 2``; each rank writes its own shards and only rank 0
consolidates them and writes ``meta.json``. On CPU both runs use one thread per process and
the same batches within a shard, so the features are compared byte for byte.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aam_search.features.cache import FeatureCache
from aam_search.features.extract import extract_features
from tests.conftest import make_config

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    from accelerate import PartialState

    from aam_search.features.config import ExtractConfig
    from aam_search.features.extract import extract_features

    if __name__ == "__main__":  # the decode pool spawns workers that import this file
        torch.set_num_threads(1)
        config = ExtractConfig.model_validate_json(Path(sys.argv[1]).read_text())
        result = extract_features(config, show_progress=False)
        state = PartialState()
        out = Path(sys.argv[2]) / f"rank-{state.process_index}.json"
        out.write_text(json.dumps({"processes": state.num_processes, "encoded": result.shards_encoded,
                                   "cache": str(result.cache.path)}))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env() -> dict[str, str]:
    skip = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "DEEPSPEED_")) and k not in skip}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_two_processes_write_the_one_process_cache_shard_by_shard(small_dataset, tmp_path):
    config = make_config(small_dataset, tmp_path / "two")
    single = extract_features(make_config(small_dataset, tmp_path / "one"), show_progress=False).cache

    (tmp_path / "config.json").write_text(config.model_dump_json())
    (tmp_path / "worker.py").write_text(WORKER)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               str(tmp_path / "worker.py"), str(tmp_path / "config.json"), str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    num_shards = single.meta["num_shards"]
    assert num_shards == 4
    assert [rank["processes"] for rank in ranks] == [2, 2]
    assert [rank["encoded"] for rank in ranks] == [2, 2]  # shards 0, 2 on rank 0; 1, 3 on rank 1
    assert ranks[0]["cache"] == ranks[1]["cache"]
    double = FeatureCache.open(Path(ranks[0]["cache"]))
    assert double.path.name == single.path.name  # same key: the world size is not an input

    meta_keys = ("status", "skipped", "feature_shape", "counts", "videos", "rows")
    assert {k: double.meta[k] for k in meta_keys} == {k: single.meta[k] for k in meta_keys}
    for name in ("split", "action", "attrs", "valid", "is_image"):
        assert torch.equal(double.labels(name), single.labels(name))
    per_shard = config.shard_videos
    for shard in range(num_shards):
        videos = torch.arange(shard * per_shard, (shard + 1) * per_shard)
        for kind in ("clip", "static"):
            owners = [getattr(cache, f"{kind}_video") for cache in (single, double)]
            rows = [torch.isin(owner, videos) for owner in owners]
            assert rows[0].any()
            assert torch.equal(owners[0][rows[0]], owners[1][rows[1]])
            features = [getattr(cache, f"{kind}_features")[mask] for cache, mask in zip((single, double), rows)]
            # byte-identical: same weights, batches and thread count in both runs
            assert torch.equal(features[0].view(torch.int16), features[1].view(torch.int16)), (shard, kind)
